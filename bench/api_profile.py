"""Where the Python time of the annotation API goes: submit a pairwise judgement, lease the next.

Run it on a throwaway PostgreSQL, which config/devservices.py starts (it exports
TEST_DATABASE_URL and TEST_REDIS_URL and removes both servers afterwards):

    OMP_NUM_THREADS=1 .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/api_profile.py [--iterations 300] [--items 2000] [--idempotency]

Setup (untimed): `migrate`, then a pairwise project at overlap 1 and one annotator with an API
token, written by bench/annotation_load.py's `create_dataset` (the same rows and markdown replies
as its `--flow api`), on production settings with DEBUG off. The two requests a labelling client
sends per task, `POST /api/assignments/{id}/pairwise` then `POST /api/projects/{id}/next`, are
driven in this process with django.test.Client and a bearer token:

1. timed: --iterations tasks without the profiler; per request the wall and CPU (this process
   only: PostgreSQL's share is not in it) of the whole request and of the handler alone
   (`get_response`: what gunicorn would spend, less WSGI parsing and the client's own work);
2. profiled: as many tasks again under cProfile, one profile per endpoint; the top functions by
   cumulative and by own time, per request (cProfile slows Python down about twofold: compare
   its figures with each other, and the timed pass with another timed pass).

--idempotency sends an `Idempotency-Key` with each submit, as bench/faults.py's clients do.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

import annotation_load as load  # bench/ is not a package: imported from its folder

ENDPOINTS = ("submit", "next")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    parser.add_argument("--database-url", default=default_url)
    parser.add_argument("--iterations", type=int, default=300, help="tasks per pass")
    parser.add_argument("--warmup", type=int, default=20, help="untimed tasks first")
    parser.add_argument(
        "--items", type=int, default=0, help="project size (default: what the passes need)"
    )
    parser.add_argument("--top", type=int, default=25, help="functions shown per table")
    parser.add_argument("--idempotency", action="store_true", help="send Idempotency-Key")
    parser.add_argument(
        "--save", type=Path, help="also write each endpoint's profile here (<endpoint>.prof)"
    )
    args = parser.parse_args(argv)
    if not args.database_url.startswith(("postgres://", "postgresql://")):
        parser.error("needs PostgreSQL: run under config/devservices.py test")
    args.items = max(args.items, args.warmup + 2 * args.iterations + 10)
    return args


def setup(args: argparse.Namespace) -> tuple[int, str]:
    """Migrate and create the project; returns its id and the annotator's token."""
    cfg = load.Config(
        database_url=args.database_url,
        annotators=1,
        tasks=args.items,
        overlap=1,
        flow="api",
        rate=None,
        duration=0.0,
        arrivals="poisson",
        workers=1,
        worker_class="sync",
        threads=1,
        keep_alive=5,
        login="http",
        seed=1,
    )
    env = load.app_env(cfg)
    env["ALLOWED_HOSTS"] = "testserver"  # django.test.Client's host
    os.environ.update(env)
    sys.path.insert(0, str(load.REPO))
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    if connection.vendor != "postgresql":
        sys.exit(f"refusing to run on {connection.vendor}: the profile needs PostgreSQL")
    call_command("migrate", "--noinput", verbosity=0)
    dataset = load.create_dataset(cfg)
    return dataset.project_id, dataset.tokens[0]


@dataclass
class Timings:
    wall: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    cpu: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    handler_wall: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})
    handler_cpu: dict[str, list[float]] = field(default_factory=lambda: {e: [] for e in ENDPOINTS})


class Driver:
    """One annotator's client: lease, submit, lease, ... with a bearer token."""

    def __init__(self, project_id: int, token: str, idempotency: bool) -> None:
        from django.test import Client

        self.client = Client(headers={"Authorization": f"Bearer {token}"})
        self.next_path = f"/api/projects/{project_id}/next"
        self.idempotency = idempotency
        self.assignment_id: int | None = None
        self.endpoint = ""
        self.timings: Timings | None = None
        self.profiles = {e: cProfile.Profile() for e in ENDPOINTS}
        self.profiling = False
        handler_get_response = self.client.handler.get_response

        def timed_get_response(request):
            # What a WSGI server would run per request, less parsing the request off the socket.
            if self.timings is None:
                return handler_get_response(request)
            wall, cpu = time.perf_counter(), time.process_time()
            response = handler_get_response(request)
            self.timings.handler_wall[self.endpoint].append(time.perf_counter() - wall)
            self.timings.handler_cpu[self.endpoint].append(time.process_time() - cpu)
            return response

        self.client.handler.get_response = timed_get_response

    def lease(self) -> None:
        response = self._post("next", self.next_path, {})
        if response.status_code != 200:
            sys.exit(f"next: {response.status_code} {response.content[:300]!r}")
        self.assignment_id = response.json()["id"]

    def submit(self) -> None:
        headers = {"Idempotency-Key": str(uuid.uuid4())} if self.idempotency else {}
        payload = {"choice": "a", "strength": "clear", "seconds_spent": 12.5}
        path = f"/api/assignments/{self.assignment_id}/pairwise"
        response = self._post("submit", path, payload, headers)
        if response.status_code != 200:
            sys.exit(f"submit: {response.status_code} {response.content[:300]!r}")

    def _post(self, endpoint: str, path: str, payload: dict, headers: dict | None = None):
        self.endpoint = endpoint
        profile = self.profiles[endpoint] if self.profiling else None
        wall, cpu = time.perf_counter(), time.process_time()
        if profile is not None:
            profile.enable()
        response = self.client.post(path, payload, content_type="application/json", headers=headers)
        if profile is not None:
            profile.disable()
        if self.timings is not None:
            self.timings.wall[endpoint].append(time.perf_counter() - wall)
            self.timings.cpu[endpoint].append(time.process_time() - cpu)
        return response

    def tasks(self, count: int) -> None:
        for _ in range(count):
            self.submit()
            self.lease()


def count_queries(driver: Driver) -> dict[str, int]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    counts = {}
    for endpoint, step in (("submit", driver.submit), ("next", driver.lease)):
        with CaptureQueriesContext(connection) as captured:
            step()
        counts[endpoint] = len(captured.captured_queries)
    return counts


def ms(values: list[float]) -> str:
    return f"{1000 * sum(values) / len(values):6.2f} mean {1000 * median(values):6.2f} median"


def profile_table(profile: cProfile.Profile, sort: str, calls: int, top: int) -> str:
    """pstats' table, its times divided by the number of requests: ms per request."""
    stats = pstats.Stats(profile)
    stats.sort_stats(sort)
    rows = []
    for func in stats.fcn_list[:top]:  # type: ignore[attr-defined]
        _, total, own, cumulative, _ = stats.stats[func]  # type: ignore[attr-defined]
        filename, line, name = func
        where = "/".join(Path(filename).parts[-3:]) if filename != "~" else ""
        rows.append(
            f"  {1000 * cumulative / calls:8.3f} {1000 * own / calls:8.3f} "
            f"{total / calls:8.1f}  {where}:{line}({name})"
        )
    head = f"  {'cum ms':>8} {'own ms':>8} {'calls':>8}  function (per request)"
    return "\n".join([head, *rows])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    project_id, token = setup(args)
    load.log(f"setup: {args.items} items in {time.perf_counter() - started:.1f} s")

    driver = Driver(project_id, token, args.idempotency)
    driver.lease()
    driver.tasks(args.warmup)
    queries = count_queries(driver)

    timings = driver.timings = Timings()
    load_before = os.getloadavg()
    driver.tasks(args.iterations)
    load_after = os.getloadavg()

    driver.timings = None
    driver.profiling = True
    driver.tasks(args.iterations)

    out = io.StringIO()
    print(
        f"\napi_profile: {args.iterations} tasks per pass, {args.items} items, overlap 1, "
        f"Idempotency-Key {'sent' if args.idempotency else 'not sent'}; load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after the timed pass "
        f"({os.cpu_count()} CPUs)",
        file=out,
    )
    print("\nper request, ms (timed pass, no profiler; CPU is this process only):", file=out)
    for endpoint in ENDPOINTS:
        print(
            f"  {endpoint:6}  wall {ms(timings.wall[endpoint])}   cpu {ms(timings.cpu[endpoint])}"
            f"   queries {queries[endpoint]}",
            file=out,
        )
        print(
            f"  {'':6}  handler wall {ms(timings.handler_wall[endpoint])}   "
            f"handler cpu {ms(timings.handler_cpu[endpoint])}",
            file=out,
        )
    for endpoint in ENDPOINTS:
        profile = driver.profiles[endpoint]
        if args.save:
            args.save.mkdir(parents=True, exist_ok=True)
            profile.dump_stats(args.save / f"{endpoint}.prof")
        for sort, title in (("cumulative", "cumulative"), ("tottime", "own time")):
            print(f"\n{endpoint}: top {args.top} by {title}", file=out)
            print(profile_table(profile, sort, args.iterations, args.top), file=out)
    print(out.getvalue())
    return 0


if __name__ == "__main__":
    sys.exit(main())
