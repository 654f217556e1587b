"""What the collation of a hex-digest column costs its unique index (feedback migration 0025).

A prompt's `content_hash` and an item's `import_key` are 64 hex digits, kept once per project by
a unique (project, hash) index that every import inserts into and looks up in. This times both
under each collation the server has, on a throwaway table:

    flock /tmp/veredicto-bench.lock .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/hash_collation.py [--rows 1000000] [--collations C,C.utf8]

- insert: one INSERT ... SELECT of --rows digests into an empty table with the index;
- lookups: --rows probes of that index, one per digest, as the import's lookups probe it.

Each collation runs --repeats times, interleaved with the others; the report gives each run and
the median. A libc locale that the machine has but the server's `initdb` did not see (one
generated since, e.g. `locale-gen en_US.UTF-8`) is added with CREATE COLLATION; collations
that are still missing (ICU's `unicode` in a build without ICU) are reported and skipped.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import psycopg
from psycopg import sql

INSERT = (
    "INSERT INTO bench_hash SELECT 1, encode(sha256(i::text::bytea), 'hex') "
    "FROM generate_series(1, %s) i"
)
LOOKUPS = (
    "SELECT count(*) FROM generate_series(1, %s) i WHERE EXISTS (SELECT 1 FROM bench_hash "
    "WHERE project = 1 AND hash = encode(sha256(i::text::bytea), 'hex'))"
)


def timed(connection: psycopg.Connection, sql: str, rows: int) -> float:
    started = time.perf_counter()
    connection.execute(sql, [rows])
    return time.perf_counter() - started


def run(connection: psycopg.Connection, collation: str, rows: int) -> tuple[float, float]:
    connection.execute("DROP TABLE IF EXISTS bench_hash")
    connection.execute(
        f'CREATE TABLE bench_hash (project int, hash varchar(64) COLLATE "{collation}", '
        "UNIQUE (project, hash))"
    )
    try:
        insert = timed(connection, INSERT, rows)
        connection.execute("ANALYZE bench_hash")
        return insert, timed(connection, LOOKUPS, rows)
    finally:
        connection.execute("DROP TABLE bench_hash")


def available(connection: psycopg.Connection, collation: str) -> bool:
    """Whether the server has the collation, adding a libc locale that the machine has but
    `initdb` did not see (a locale generated since: `locale-gen en_US.UTF-8`)."""
    query = "SELECT 1 FROM pg_collation WHERE collname = %s"
    if connection.execute(query, [collation]).fetchone():
        return True
    create = sql.SQL("CREATE COLLATION IF NOT EXISTS {} (provider = libc, locale = {})")
    try:
        connection.execute(create.format(sql.Identifier(collation), sql.Literal(collation)))
    except psycopg.Error:
        return False
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", default=os.environ.get("TEST_DATABASE_URL", ""))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--collations", default="C,C.utf8,en_US.utf8,unicode")
    args = parser.parse_args()
    if not args.database_url:
        parser.error("--database-url (or TEST_DATABASE_URL: run under config/devservices.py)")

    with psycopg.connect(args.database_url, autocommit=True) as connection:
        collations = []
        for collation in args.collations.split(","):
            if available(connection, collation):
                collations.append(collation)
            else:
                print(f"{collation}: neither in the server nor a locale of this machine, skipped")
        version = connection.execute("SHOW server_version").fetchone()[0]
        load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
        print(f"bench/hash_collation.py: {args.rows:,} digests; PostgreSQL {version}, load {load}")
        results: dict[str, list[tuple[float, float]]] = {c: [] for c in collations}
        for _ in range(args.repeats):
            for collation in collations:
                try:
                    results[collation].append(run(connection, collation, args.rows))
                except psycopg.errors.FeatureNotSupported as error:  # ICU missing from the build
                    print(f"{collation}: {error}, skipped")
                    results.pop(collation)
                    collations.remove(collation)
        for collation, runs in results.items():
            inserts = ", ".join(f"{insert:.2f}" for insert, _ in runs)
            lookups = ", ".join(f"{lookup:.2f}" for _, lookup in runs)
            print(
                f"{collation:12} insert median {statistics.median(i for i, _ in runs):.2f} s "
                f"({inserts}); lookups median {statistics.median(x for _, x in runs):.2f} s "
                f"({lookups})"
            )


if __name__ == "__main__":
    main()
