"""Import/export throughput of preference data: generate, import (twice), snapshot, read back.

Run it on a throwaway PostgreSQL, which config/devservices.py starts (it exports
TEST_DATABASE_URL and removes the server afterwards), one timing run at a time on a shared
machine:

    # the figure: 1,000,000 rows as an ordinary role, fsync on, foreign-key triggers on
    flock /tmp/veredicto-bench.lock .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/import_export.py

    # the import's opt-in (VEREDICTO_IMPORT_TRIGGERS_OFF), reported separately: as a superuser,
    # or as the ordinary role granted SET on session_replication_role
    ... bench/import_export.py --role superuser --triggers-off
    ... bench/import_export.py --triggers-off --grant-replication-role

    # the first wave's figure: superuser, triggers off, fsync off
    ... bench/import_export.py --role superuser --triggers-off --fsync off

    # what-ifs, to attribute the server's time: the same import into a schema without the
    # records browser's search columns (or only their GIN indexes) and/or the foreign keys
    ... bench/import_export.py --rows 200000 --without search,foreign-keys

    # a quicker run; compare its peak memory with the full run's to see that it is flat
    ... bench/import_export.py --rows 100000

It needs about 5 GB of free disk per million rows (file, database, snapshot), all removed at the
end, and takes about 5 minutes at a million rows on 2 cores.

The database (before any step, untimed). The --database-url role (devservices': a superuser)
is only the administrator:

- --fsync on (default): fsync, synchronous_commit and full_page_writes set to on with ALTER
  SYSTEM and pg_reload_conf() (all three take effect on a reload; devservices puts its "off"
  in postgresql.conf, not on the command line, which would outrank ALTER SYSTEM), and put back
  as they were at the end. --fsync off sets them off, as devservices starts its server.
- --role ordinary (default): a new role, LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE, owning a
  new database; every step runs as that role in that database, which it migrates itself (a
  database's owner may create tables in its public schema). Both are dropped at the end.
  --role superuser runs every step as the --database-url role, which must be a superuser, in
  the --database-url database (the first wave's figure).
- --triggers-off sets VEREDICTO_IMPORT_TRIGGERS_OFF=1 for the steps: the import then turns the
  per-row foreign-key triggers off where the role may set session_replication_role (a
  superuser; on PostgreSQL 15+ a role granted SET on it) and keeps them on otherwise, as an
  ordinary role does unless --grant-replication-role grants it that explicitly.

Steps, each in a fresh Python process so that its memory figures are its own:

1. generate: a JSONL file of --rows preference rows {"prompt", "chosen", "rejected"} of short
   generated text, streamed to disk.
2. import: `feedback.services.import_file` into a new pairwise project (the real service:
   validation and writing in one transaction, with progress shown as it goes).
3. search: what a worker does once the import has committed, the search vectors the import
   left for later (`feedback.services.search_index_pending`); not one of the goal's steps: the
   records are searchable meanwhile, by a slower path.
4. reimport: the same file again, which must add nothing (Item.import_key and prompt hashes).
5. snapshot: `feedback.services.snapshot_create` of kind preference with include_imported=True
   (train/test JSONL, Parquet, save_to_disk and hf.tar).
6. load: `datasets.load_dataset("json", ...)` on the snapshot's JSONL, counting rows.

Setup (untimed): `manage.py migrate` and the project. Every step checks its
counts (N items, N judgements, 2N completions, N snapshot rows, nothing added by the re-import)
and the bench exits 1 if a check fails. --profile runs the import step under cProfile.

How to read it. The first lines say what the steps ran as, from the setup step's own session:
the role and whether it is a superuser; the server's fsync, synchronous_commit and
full_page_writes; whether the import's foreign-key triggers were on (each foreign key of each
new row checked by a query of its own, row by row) or off (VEREDICTO_IMPORT_TRIGGERS_OFF and a
role allowed to: the keys kept by construction, see feedback/services/imports/postgres.py), and
why. Then one line per step:

- seconds, rows/s: the step's work (interpreter start and Django setup excluded).
- py cpu, pg cpu: CPU seconds of the step's process (all its threads) and of the PostgreSQL
  backend serving it. On 2 cores, wall time can't go below the larger of the two, nor below
  half their sum. The import sends its rows to PostgreSQL from a thread of their own, so its
  py and pg CPU overlap: its seconds come close to the larger of the two on an idle machine.
  Other work on the machine adds to the wall time, not to the CPU seconds: the load average
  is printed for that reason, and CPU seconds are the figures to compare between runs on a
  busy machine.
- RSS start: the process after its imports, before the work.
- peak RSS: the largest resident set of the step's process and anything it started (wait4's
  ru_maxrss). It counts pages of memory-mapped files, which datasets uses for Arrow data, so
  it grows with the rows in the snapshot and load steps without being memory the step holds.
- peak anon: the largest anonymous resident memory of the process (RssAnon, sampled 5 times a
  second): what the step itself holds, mapped files left out. "Memory flat" means this column
  (and pg anon) stays about the same from --rows 100000 to a million.
- pg anon: the same for the PostgreSQL backend (its shared buffers left out).
- pg wait: seconds the backend was ready to run but waited for a CPU (/proc/PID/schedstat):
  other work on the machine. What is left of the step's seconds after pg cpu and pg wait is
  the time the backend waited for Python: in the import, how well the two overlapped.

The summary line gives the configuration in a few words, each step's seconds, the largest peak
RSS, and whether the goal was met (judged at 1,000,000 rows only). The goal (issues #9, #19): a
million rows each way, import, re-import and snapshot, in under 60 s on a 2-core machine, as an
ordinary role with fsync on, with memory flat: peak memory that does not grow with --rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import secrets
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

REPO = Path(__file__).resolve().parent.parent
POSTGRES_SCHEMES = {"postgres", "postgresql", "pgsql", "postgis"}
STEPS = ("generate", "import", "search", "reimport", "snapshot", "load")
GOAL_SECONDS = 60.0
GOAL_ROWS = 1_000_000
GOAL_STEPS = ("import", "reimport", "snapshot")
DURABILITY = ("fsync", "synchronous_commit", "full_page_writes")
PROFILE = REPO / "var" / "tmp" / "import-export-import.prof"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    parser.add_argument(
        "--database-url",
        default=default_url,
        help="PostgreSQL to use (default: $TEST_DATABASE_URL, else $DATABASE_URL)",
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="preference rows")
    parser.add_argument(
        "--role",
        choices=("ordinary", "superuser"),
        default="ordinary",
        help="run every step as a fresh ordinary role owning a fresh database (default), or as "
        "the --database-url's role, which must be a superuser (the old figure)",
    )
    parser.add_argument(
        "--locale",
        help="the steps' new database's collation and character classes (CREATE DATABASE ... "
        "LOCALE, from template0); default: the server's (devservices': C.UTF-8). A managed "
        "server's default is usually en_US.UTF-8 (`locale-gen en_US.UTF-8` first)",
    )
    parser.add_argument(
        "--fsync",
        choices=("on", "off"),
        default="on",
        help="fsync, synchronous_commit and full_page_writes on the server, set with ALTER "
        "SYSTEM for the run and reset afterwards (default on; off: devservices' settings)",
    )
    parser.add_argument(
        "--triggers-off",
        action="store_true",
        help="VEREDICTO_IMPORT_TRIGGERS_OFF=1 for the steps: the import turns foreign-key "
        "triggers off where the role may set session_replication_role, else keeps them on",
    )
    parser.add_argument(
        "--grant-replication-role",
        action="store_true",
        help="with --role ordinary: GRANT SET ON PARAMETER session_replication_role to the "
        "role (PostgreSQL 15+), so that --triggers-off can take effect",
    )
    parser.add_argument(
        "--without",
        default="",
        help="what-if, to attribute the server's time: drop parts of the schema from the "
        f"bench's own database after migrating it, comma-separated: {', '.join(WITHOUT)}",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the import step under cProfile (its main thread): the 25 costliest "
        f"functions on stderr, the whole profile in {PROFILE}",
    )
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--workdir",
        type=Path,
        default=REPO / "var" / "tmp" / "import-export",
        help="where the generated file and the snapshot go (emptied first)",
    )
    # Internal: one step in this process (the parent runs each step this way).
    parser.add_argument("--step", choices=[*STEPS, "setup"], help=argparse.SUPPRESS)
    parser.add_argument("--project", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database: run under config/devservices.py test, or pass --database-url")
    if urlsplit(args.database_url).scheme not in POSTGRES_SCHEMES:
        parser.error(f"refusing {urlsplit(args.database_url).scheme or 'that'}: needs PostgreSQL")
    if args.rows < 1:
        parser.error("--rows must be positive")
    args.without = [part for part in args.without.split(",") if part]
    if unknown := sorted(set(args.without) - set(WITHOUT)):
        parser.error(f"--without: unknown {', '.join(unknown)} (choose from {', '.join(WITHOUT)})")
    if args.without and args.role != "ordinary":
        parser.error("--without needs --role ordinary (it alters the bench's own database)")
    if args.locale and args.role != "ordinary":
        parser.error("--locale needs --role ordinary (it makes the bench's own database)")
    if args.grant_replication_role and args.role != "ordinary":
        parser.error("--grant-replication-role needs --role ordinary (a superuser has it)")
    return args


# What --without drops, as its owner, in the bench's own database (the records browser's search:
# feedback migration 0019; the foreign keys: every one in the schema, so none is checked).
WITHOUT = {
    "search-index": "DROP INDEX feedback_prompt_search; DROP INDEX feedback_completion_search",
    "search": "DROP TRIGGER feedback_prompt_search ON feedback_prompt; "
    "DROP TRIGGER feedback_completion_search ON feedback_completion; "
    "DROP TRIGGER feedback_prompt_search_changed ON feedback_prompt; "
    "DROP TRIGGER feedback_completion_search_changed ON feedback_completion; "
    "ALTER TABLE feedback_prompt DROP COLUMN search; "
    "ALTER TABLE feedback_completion DROP COLUMN search",
    "foreign-keys": """DO $$ DECLARE c record; BEGIN
        FOR c IN SELECT conrelid::regclass AS t, conname FROM pg_constraint
                 WHERE contype = 'f' AND connamespace = 'public'::regnamespace LOOP
            EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.t, c.conname);
        END LOOP; END $$""",
    # The indexes an imported label's rows need not be in (each a what-if for a partial index
    # that leaves them out), and the foreign keys of columns that copy another row's.
    "author-index": "DROP INDEX feedback_completion_author_id_7d3d002d",
    "assignment-indexes": "DROP INDEX feedback_as_item_id_8fcdfb_idx; "
    "DROP INDEX feedback_as_annotat_b9e922_idx; DROP INDEX assignment_mine_by_project",
    "judgement-indexes": "DROP INDEX feedback_pairwisejudgement_annotator_id_e1fd156c; "
    "DROP INDEX pairwisejudgement_review",
    "copied-foreign-keys": """DO $$ DECLARE c record; BEGIN
        FOR c IN SELECT conrelid::regclass AS t, conname FROM pg_constraint
                 JOIN pg_attribute ON attrelid = conrelid AND attnum = conkey[1]
                 WHERE contype = 'f' AND connamespace = 'public'::regnamespace
                   AND ((conrelid::regclass::text LIKE '%judgement' AND attname IN
                         ('item_id', 'annotator_id'))
                     OR (conrelid = 'feedback_assignment'::regclass AND attname = 'project_id'))
        LOOP EXECUTE format('ALTER TABLE %s DROP CONSTRAINT %I', c.t, c.conname);
        END LOOP; END $$""",
}


def drop_for_what_if(args: argparse.Namespace) -> None:
    """--without: what the import would cost without these parts of the schema."""
    import psycopg

    with psycopg.connect(args.step_url, autocommit=True) as owner:
        for part in args.without:
            log(f"without {part}: {' '.join(WITHOUT[part].split())[:100]}")
            owner.execute(WITHOUT[part])


def app_env(args: argparse.Namespace) -> dict[str, str]:
    """Production settings (DEBUG off, so no query log grows with the rows) on the steps'
    database, as the steps' role."""
    env = dict(os.environ)
    env.pop("VEREDICTO_TESTING", None)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=args.step_url,
        VEREDICTO_IMPORT_TRIGGERS_OFF="1" if args.triggers_off else "0",
        DEBUG="0",
        SECRET_KEY="bench-only",
        MEDIA_ROOT=str(args.workdir / "media"),
        LOG_LEVEL="WARNING",
    )
    if redis := os.environ.get("TEST_REDIS_URL"):  # devservices' (the import sends a task)
        env["REDIS_URL"] = redis
    return env


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- The generated file ----------------------------------------------------------------------

_VOCABULARY = (
    "model answer question value function list error result example code test order page file "
    "line case number option setting request query cache server client table index key loop "
    "memory thread process output input string integer record field batch queue worker lock "
    "reply prompt user step reason detail change version module package method class object"
)
SENTENCE_POOL = 5000


def _sentences(rng: random.Random) -> list[str]:
    """A pool of short sentences; rows combine them, so writing a row costs a few choices."""
    words = _VOCABULARY.split()
    pool = []
    for _ in range(SENTENCE_POOL):
        sentence = rng.choices(words, k=rng.randint(5, 12))
        if rng.random() < 0.2:
            sentence[rng.randrange(len(sentence))] = f"`{rng.choice(words)}()`"
        pool.append(" ".join(sentence).capitalize() + ".")
    return pool


def data_file(args: argparse.Namespace) -> Path:
    return args.workdir / "preferences.jsonl"


def generate(args: argparse.Namespace) -> dict[str, Any]:
    """N unique preference rows: prompts about 100 characters, replies about 70 to 250."""
    path = data_file(args)
    rng = random.Random(args.seed)
    pool = _sentences(rng)
    choose = rng.choices
    started = time.perf_counter()
    with path.open("w", encoding="utf-8", buffering=1 << 20) as out:
        for index in range(args.rows):
            row = {
                "prompt": f"Question {index}: " + " ".join(choose(pool, k=1 + index % 2)),
                "chosen": " ".join(choose(pool, k=2 + index % 3)),
                "rejected": " ".join(choose(pool, k=1 + index % 3)),
            }
            out.write(json.dumps(row) + "\n")
    return {"seconds": time.perf_counter() - started, "bytes": path.stat().st_size}


# --- Steps that need Django ------------------------------------------------------------------


def _proc_kib(path: str, field: str) -> int:
    """A "Field:   123 kB" line of a /proc file, in bytes (0 if unreadable)."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


class StepMonitor:
    """While a step works: CPU seconds of this process and of its PostgreSQL backend, and the
    peak anonymous memory of both (sampled 5 times a second). Anonymous memory leaves out
    memory-mapped files (datasets maps its Arrow files) and, for the backend, the shared
    buffers it touched, neither of which is memory the step holds."""

    def __init__(self, backend_pid: int | None = None) -> None:
        import psutil

        self.backend = psutil.Process(backend_pid) if backend_pid else None
        self.peak_anon = self.peak_pg_anon = 0
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._sample, daemon=True)

    def _pg_waited(self) -> float:
        """Seconds the backend has spent runnable but not running (0 if unreadable)."""
        if self.backend is None:
            return 0.0
        try:
            with open(f"/proc/{self.backend.pid}/schedstat") as handle:
                return int(handle.read().split()[1]) / 1e9
        except (OSError, IndexError, ValueError):
            return 0.0

    def _pg_cpu(self) -> float:
        if self.backend is None:
            return 0.0
        times = self.backend.cpu_times()
        return times.user + times.system

    def _sample(self) -> None:
        backend = f"/proc/{self.backend.pid}/smaps_rollup" if self.backend else None
        while True:
            self.peak_anon = max(self.peak_anon, _proc_kib("/proc/self/status", "RssAnon:"))
            if backend:
                self.peak_pg_anon = max(self.peak_pg_anon, _proc_kib(backend, "Anonymous:"))
            if self.stopped.wait(0.2):
                return

    def __enter__(self) -> StepMonitor:
        self.cpu, self.pg_cpu = time.process_time(), self._pg_cpu()
        self.pg_wait = self._pg_waited()
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self.thread.join()
        self.cpu, self.pg_cpu = time.process_time() - self.cpu, self._pg_cpu() - self.pg_cpu
        self.pg_wait = self._pg_waited() - self.pg_wait

    def result(self) -> dict[str, Any]:
        return {
            "py_cpu": self.cpu,
            "pg_cpu": self.pg_cpu if self.backend else None,
            "pg_wait": self.pg_wait if self.backend else None,
            "anon": self.peak_anon,
            "pg_anon": self.peak_pg_anon or None,
        }


class Progress:
    """A one-line progress bar on stderr for import_file's (phase, rows) callbacks."""

    def __init__(self, total: int) -> None:
        self.total, self.phase = total, ""
        self.started = self.last = time.perf_counter()
        self.tty = sys.stderr.isatty()
        self.next_line = 0.0

    def __call__(self, phase: str, done: int) -> None:
        now = time.perf_counter()
        if phase != self.phase:  # the new phase began when the last one reported its end
            self.phase, self.started, self.next_line = phase, self.last, 0.0
        self.last = now
        fraction = min(done / self.total, 1.0)
        if not self.tty and fraction < self.next_line:
            return
        self.next_line = fraction + 0.25
        bar = "#" * int(fraction * 30)
        rate = done / max(now - self.started, 1e-9)
        line = f"  {phase:<10} [{bar:<30}] {done:>10,} rows {rate:>9,.0f}/s"
        sys.stderr.write(f"\r{line}" if self.tty else f"{line}\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.tty:
            sys.stderr.write("\n")


def _counts(project_id: int) -> dict[str, int]:
    from feedback.models import Completion, Item, PairwiseJudgement, Prompt

    return {
        "prompts": Prompt.objects.filter(project_id=project_id).count(),
        "completions": Completion.objects.filter(prompt__project_id=project_id).count(),
        "items": Item.objects.filter(project_id=project_id).count(),
        "judgements": PairwiseJudgement.objects.filter(item__project_id=project_id).count(),
    }


def setup(args: argparse.Namespace) -> dict[str, Any]:
    from django.db import connection

    from feedback import services
    from feedback.models import TaskKind

    if connection.vendor != "postgresql":
        sys.exit(f"refusing to run on {connection.vendor}: the bench needs PostgreSQL")
    tag = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    project = services.project_create(name=f"Import bench {tag}", task_kinds=[TaskKind.PAIRWISE])
    from django.conf import settings

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT current_user, current_setting('is_superuser') = 'on', "
            + ", ".join(f"current_setting('{name}')" for name in ("server_version", *DURABILITY))
        )
        role, superuser, version, *durability = cursor.fetchone()
        # The import's own test (feedback/services/imports/postgres.py, _may_turn_off_triggers).
        if connection.pg_version < 150000:
            may_turn_off = superuser
        else:
            cursor.execute("SELECT has_parameter_privilege('session_replication_role', 'SET')")
            may_turn_off = cursor.fetchone()[0]
        cursor.execute("SELECT datcollate FROM pg_database WHERE datname = current_database()")
        (collation,) = cursor.fetchone()
    return {
        "collation": collation,
        "project": project.pk,
        "postgres": version,
        "db_role": role,
        "superuser": superuser,
        "server": dict(zip(DURABILITY, durability, strict=True)),
        "triggers_setting": settings.VEREDICTO_IMPORT_TRIGGERS_OFF,
        "may_turn_off_triggers": may_turn_off,
    }


def search_catch_up(args: argparse.Namespace) -> dict[str, Any]:
    """What a worker does once the import has committed: the search vectors it left for later
    (feedback.services.search), here in the step's own process."""
    from feedback.services import search_index_pending, search_pending

    if "search" in args.without:
        return {"seconds": 0.0, "checks": {"none (what-if without search)": True}, "errors": []}
    pending = search_pending()
    started = time.perf_counter()
    indexed = search_index_pending()
    seconds = time.perf_counter() - started
    checks = {
        f"{indexed:,} texts indexed": indexed == pending >= 2 * args.rows,  # and the prompts
        "none left": search_pending() == 0,
    }
    return {"seconds": seconds, "checks": checks, "errors": []}


def import_once(args: argparse.Namespace) -> dict[str, Any]:
    from feedback.models import Project
    from feedback.services import ImportOptions, import_file

    project = Project.objects.get(pk=args.project)
    before = _counts(project.pk)
    progress = Progress(args.rows)
    profiler = None
    if args.profile and args.step == "import":
        import cProfile

        profiler = cProfile.Profile()
    started = time.perf_counter()
    with profiler or contextlib.nullcontext():
        report = import_file(
            project=project,
            path=data_file(args),
            options=ImportOptions(),
            progress=progress,
        )
    seconds = time.perf_counter() - started
    progress.close()
    if profiler:
        import pstats

        PROFILE.parent.mkdir(parents=True, exist_ok=True)
        profiler.dump_stats(PROFILE)
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("tottime").print_stats(25)
    after = _counts(project.pk)
    added = {what: after[what] - before[what] for what in after}
    n = args.rows
    if args.step == "import":
        checks = {
            "report ok": report.ok,
            f"{n:,} items": added["items"] == n,
            f"{n:,} judgements": added["judgements"] == n,
            f"{2 * n:,} completions": added["completions"] == 2 * n,
            "report matches the rows": report.created.get("items") == n,
        }
    else:
        checks = {
            "report ok": report.ok,
            "0 rows added": not any(added.values()),
            f"{n:,} duplicates skipped": report.skipped_duplicates == n,
        }
    return {"seconds": seconds, "checks": checks, "errors": report.errors[:5]}


def snapshot(args: argparse.Namespace) -> dict[str, Any]:
    from feedback.models import Project
    from feedback.services import snapshot_create

    project = Project.objects.get(pk=args.project)
    started = time.perf_counter()
    built = snapshot_create(
        project=project, kind="preference", name="bench", policy={"include_imported": True}
    )
    seconds = time.perf_counter() - started
    directory = built.path()
    files = ["train.jsonl", "test.jsonl", "train.parquet", "hf.tar", "manifest.json"]
    checks = {
        "ready": built.is_ready,
        f"{args.rows:,} rows": sum(built.row_counts.values()) == args.rows,
        "files written": all((directory / name).exists() for name in files),
    }
    return {"seconds": seconds, "checks": checks, "directory": str(directory), **built.row_counts}


def load(args: argparse.Namespace) -> dict[str, Any]:
    import datasets
    from django.conf import settings

    from feedback.models import DatasetSnapshot

    built = DatasetSnapshot.objects.filter(project_id=args.project).latest("created_at")
    files = {split: str(built.path() / f"{split}.jsonl") for split in ("train", "test")}
    cache = Path(settings.MEDIA_ROOT).parent / "datasets-cache"
    started = time.perf_counter()
    loaded = datasets.load_dataset("json", data_files=files, cache_dir=str(cache))
    rows = sum(split.num_rows for split in loaded.values())
    seconds = time.perf_counter() - started
    columns = set(loaded["train"].column_names)
    checks = {
        f"{args.rows:,} rows": rows == args.rows,
        "prompt/chosen/rejected": {"prompt", "chosen", "rejected"} <= columns,
    }
    return {"seconds": seconds, "checks": checks}


def run_step(args: argparse.Namespace) -> dict[str, Any]:
    """One step in this process; prints its result as the last line of stdout."""
    import psutil

    if args.step == "generate":
        rss = psutil.Process().memory_info().rss
        with StepMonitor() as monitor:
            result = generate(args)
        return {**result, **monitor.result(), "rss_start": rss}
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    if args.step == "setup":
        return setup(args)
    import datasets  # imported by snapshots anyway: counted in "RSS at start"
    import pyarrow.parquet  # noqa: F401
    from django.db import connection

    datasets.disable_progress_bars()
    connection.ensure_connection()
    rss = psutil.Process().memory_info().rss
    work = {
        "import": import_once,
        "search": search_catch_up,
        "reimport": import_once,
        "snapshot": snapshot,
        "load": load,
    }
    with StepMonitor(connection.connection.info.backend_pid) as monitor:
        result = work[args.step](args)
    return {**result, **monitor.result(), "rss_start": rss}


# --- The parent: the database, then every step in its own process ----------------------------


def server_durability(admin: Any, value: str, undo: list[Any]) -> None:
    """fsync, synchronous_commit and full_page_writes set to `value` with ALTER SYSTEM: all
    three take effect on pg_reload_conf(), no restart. Waits until this session sees them,
    and leaves on `undo` what puts the server back."""
    import psycopg
    from psycopg import sql

    names = list(DURABILITY)
    now = dict(admin.execute("SELECT name, setting FROM pg_settings WHERE name = ANY(%s)", [names]))
    changed = [name for name in names if now[name] != value]
    if not changed:
        return
    # What ALTER SYSTEM had already put in postgresql.auto.conf, restored afterwards.
    before = dict(
        admin.execute(
            "SELECT name, setting FROM pg_file_settings WHERE name = ANY(%s) "
            "AND sourcefile LIKE '%%postgresql.auto.conf' AND error IS NULL",
            [changed],
        )
    )
    log(f"server: ALTER SYSTEM SET {', '.join(changed)} = {value}; pg_reload_conf()")
    undo.append(sql.SQL("SELECT pg_reload_conf()"))  # undone last: after the resets
    try:
        for name in changed:
            setting = sql.Identifier(name)
            undo.append(
                sql.SQL("ALTER SYSTEM SET {} = {}").format(setting, sql.Literal(before[name]))
                if name in before
                else sql.SQL("ALTER SYSTEM RESET {}").format(setting)
            )
            admin.execute(sql.SQL("ALTER SYSTEM SET {} = {}").format(setting, sql.Literal(value)))
    except psycopg.errors.InsufficientPrivilege as error:
        raise SystemExit(f"cannot set {', '.join(changed)} to {value}: {error}") from None
    finally:
        admin.execute("SELECT pg_reload_conf()")
    deadline = time.monotonic() + 10
    while True:  # a backend reloads its configuration between statements, soon after the signal
        rows = admin.execute(
            "SELECT name, setting, source FROM pg_settings WHERE name = ANY(%s)", [changed]
        ).fetchall()
        if all(setting == value for _, setting, _ in rows):
            return
        if time.monotonic() > deadline:
            stuck = ", ".join(f"{name}={setting} (from {source})" for name, setting, source in rows)
            raise SystemExit(
                f"the server kept {stuck} after ALTER SYSTEM and pg_reload_conf(): a setting "
                "on the command line outranks ALTER SYSTEM"
            )
        time.sleep(0.1)


def prepare_database(args: argparse.Namespace, admin: Any, undo: list[Any]) -> None:
    """Set the server's durability, and with --role ordinary make the role the steps run as:
    LOGIN and nothing else, owning a fresh database that it migrates itself (PostgreSQL 15+
    lets a database's owner create tables in its public schema). Sets args.step_url; what
    undoes it goes on `undo`, run in reverse order by the caller."""
    from psycopg import sql

    server_durability(admin, args.fsync, undo)
    if args.role == "superuser":
        args.step_url = args.database_url
        return
    name = f"veredicto_bench_{os.getpid()}"
    password = secrets.token_hex(16)
    role = sql.Identifier(name)
    log(f"role {name}: LOGIN NOSUPERUSER, owner of a new database {name}")
    admin.execute(
        sql.SQL(
            "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS "
            "PASSWORD {}"
        ).format(role, sql.Literal(password))
    )
    undo.append(sql.SQL("DROP ROLE {}").format(role))
    create = sql.SQL("CREATE DATABASE {} OWNER {}").format(role, role)
    if args.locale:
        create += sql.SQL(" TEMPLATE template0 LOCALE {}").format(sql.Literal(args.locale))
    admin.execute(create)
    undo.append(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(role))
    if args.grant_replication_role:
        log(f"GRANT SET ON PARAMETER session_replication_role TO {name}")
        admin.execute(sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(role))
        undo.append(
            sql.SQL("REVOKE SET ON PARAMETER session_replication_role FROM {}").format(role)
        )
    url = urlsplit(args.database_url)
    host = f"[{url.hostname}]" if ":" in (url.hostname or "") else url.hostname or ""
    netloc = f"{quote(name)}:{password}@{host}" + (f":{url.port}" if url.port else "")
    args.step_url = url._replace(netloc=netloc, path=f"/{name}").geturl()


def run_undo(admin: Any, undo: list[Any]) -> None:
    """Undo prepare_database, last change first; a failure is reported, not raised."""
    for statement in reversed(undo):
        try:
            admin.execute(statement)
        except Exception as error:  # the rest must still be undone
            log(f"could not undo ({statement.as_string(admin)}): {error}")


@dataclass
class StepResult:
    name: str
    result: dict[str, Any]
    peak_rss: int  # bytes, of the step's process tree
    wall: float


def spawn(args: argparse.Namespace, step: str, **extra: int) -> StepResult:
    argv = [sys.executable, __file__, "--step", step, "--rows", str(args.rows)]
    argv += ["--seed", str(args.seed), "--workdir", str(args.workdir)]
    argv += ["--profile"] if args.profile else []
    argv += [arg for key, value in extra.items() for arg in (f"--{key}", str(value))]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=REPO, env=app_env(args), stdout=subprocess.PIPE)
    assert proc.stdout
    output = proc.stdout.read().decode()
    # wait4, not wait: its ru_maxrss is the peak of this child and of its reaped descendants.
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        sys.exit(f"step {step} failed with status {proc.returncode}")
    result = json.loads(output.strip().splitlines()[-1])
    return StepResult(step, result, usage.ru_maxrss * 1024, time.perf_counter() - started)


def mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:,.0f}M"


def configuration(args: argparse.Namespace, facts: dict[str, Any]) -> list[str]:
    """What the steps ran as, from the setup step's own session: role, server durability,
    foreign-key triggers."""
    role = facts["db_role"]
    if facts["superuser"]:
        kind = "a superuser"
    else:
        kind = "an ordinary role (NOSUPERUSER; owns the database it migrated)"
        if args.grant_replication_role:
            kind += ", granted SET ON PARAMETER session_replication_role"
    server = ", ".join(f"{name}={value}" for name, value in facts["server"].items())
    server += f"; database collation {facts['collation']}"
    if not facts["triggers_setting"]:
        triggers = "on: every foreign key checked row by row (VEREDICTO_IMPORT_TRIGGERS_OFF off)"
    elif facts["may_turn_off_triggers"]:
        why = "a superuser" if facts["superuser"] else "granted SET on session_replication_role"
        triggers = (
            f"off: VEREDICTO_IMPORT_TRIGGERS_OFF=1 and the role is {why}; foreign keys kept by "
            "construction"
        )
    else:
        triggers = (
            "on: VEREDICTO_IMPORT_TRIGGERS_OFF=1, but the role may not set "
            "session_replication_role, so the import kept them on (--grant-replication-role "
            "grants it)"
        )
    lines = [f"role: {role}, {kind}", f"server: {server}", f"foreign-key triggers: {triggers}"]
    if args.without:
        lines.append(f"what-if: the schema WITHOUT {', '.join(args.without)} (not the app's)")
    return lines


def mode(facts: dict[str, Any]) -> str:
    """The configuration in a few words, for the summary line."""
    triggers = facts["triggers_setting"] and facts["may_turn_off_triggers"]
    return (
        f"{'superuser' if facts['superuser'] else 'ordinary role'}, "
        f"fsync {facts['server']['fsync']}, "
        f"synchronous_commit {facts['server']['synchronous_commit']}, "
        f"triggers {'off' if triggers else 'on'}"
    )


def report(args: argparse.Namespace, results: list[StepResult], facts: dict[str, Any]) -> int:
    n = args.rows
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nbench/import_export.py: {n:,} preference rows; Python {platform.python_version()}, "
        f"PostgreSQL {facts['postgres']}, {os.cpu_count()} CPUs, load average now {load}"
    )
    for line in configuration(args, facts):
        print(f"  {line}")
    header = (
        f"{'step':<9} {'seconds':>7} {'rows/s':>8} {'py cpu':>6} {'pg cpu':>6} "
        f"{'pg wait':>7} {'RSS start':>9} {'peak RSS':>9} {'peak anon':>9} {'pg anon':>8}  checks"
    )
    print(header)
    print("-" * len(header))
    failed = []
    for step in results:
        r = step.result
        checks = r.get("checks", {})
        failed += [f"{step.name}: {name}" for name, ok in checks.items() if not ok]
        verdict = "ok" if all(checks.values()) else "FAILED"
        pg_cpu = "-" if r["pg_cpu"] is None else f"{r['pg_cpu']:.1f}"
        pg_wait = "-" if r.get("pg_wait") is None else f"{r['pg_wait']:.1f}"
        print(
            f"{step.name:<9} {r['seconds']:>7.1f} {n / r['seconds']:>8,.0f} {r['py_cpu']:>6.1f} "
            f"{pg_cpu:>6} {pg_wait:>7} {mib(r['rss_start']):>9} {mib(step.peak_rss):>9} "
            f"{mib(r['anon']):>9} {mib(r['pg_anon']):>8}  "
            f"{verdict} ({', '.join(checks) or 'size ' + mib(r['bytes'])})"
        )
    by_name = {step.name: step for step in results}
    over = [name for name in GOAL_STEPS if by_name[name].result["seconds"] >= GOAL_SECONDS]
    peak = max(by_name[name].peak_rss for name in GOAL_STEPS)
    goal = "met" if not over else f"missed by {', '.join(over)}"
    if n < GOAL_ROWS:
        goal = f"not judged below {GOAL_ROWS:,} rows"
    if args.without:
        goal = f"not judged: a what-if without {', '.join(args.without)}"
    print(
        f"\nsummary: {n:,} rows ({mode(facts)}); "
        + ", ".join(f"{name} {by_name[name].result['seconds']:.1f} s" for name in STEPS[1:])
        + f"; peak RSS {mib(peak)}; goal ({GOAL_SECONDS:.0f} s each way at {GOAL_ROWS:,}): {goal}; "
        + ("all checks passed" if not failed else f"FAILED: {'; '.join(failed)}")
    )
    for error in by_name["import"].result.get("errors", []):
        print(f"  import error, row {error['row']}: {error['message']}")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.workdir = args.workdir.resolve()
    if args.step:
        print(json.dumps(run_step(args), default=str))
        return 0
    import shutil

    import psycopg

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    undo: list[Any] = []
    with psycopg.connect(args.database_url, autocommit=True) as admin:
        try:
            prepare_database(args, admin, undo)
            log("migrate")
            subprocess.run(
                [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
                cwd=REPO,
                env=app_env(args),
                check=True,
            )
            drop_for_what_if(args)
            facts = spawn(args, "setup").result
            if args.role == "superuser" and not facts["superuser"]:
                raise SystemExit(f"--role superuser, but {facts['db_role']} is not a superuser")
            for line in configuration(args, facts):
                log(line)
            ids = {"project": facts["project"]}
            results = []
            for step in STEPS:
                log(f"{step}: {args.rows:,} rows")
                results.append(spawn(args, step, **(ids if step != "generate" else {})))
                log(f"{step}: {results[-1].result['seconds']:.1f} s")
        finally:
            run_undo(admin, undo)
            shutil.rmtree(args.workdir, ignore_errors=True)
    return report(args, results, facts)


if __name__ == "__main__":
    sys.exit(main())
