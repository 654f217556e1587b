"""Import/export throughput of preference data: generate, import (twice), snapshot, read back.

Run it on a throwaway PostgreSQL, which config/devservices.py starts (it exports
TEST_DATABASE_URL and removes the server afterwards), one timing run at a time on a shared
machine:

    flock /tmp/veredicto-bench.lock .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/import_export.py                 # the figure: 1,000,000 rows

    # a quicker run; compare its peak memory with the full run's to see that it is flat
    flock /tmp/veredicto-bench.lock .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/import_export.py --rows 100000

It needs about 5 GB of free disk per million rows (file, database, snapshot), all removed at the
end, and takes about 5 minutes at a million rows on 2 cores.

Steps, each in a fresh Python process so that its memory figures are its own:

1. generate: a JSONL file of --rows preference rows {"prompt", "chosen", "rejected"} of short
   generated text, streamed to disk.
2. import: `feedback.services.import_file` into a new pairwise project (the real service:
   validation and writing in one transaction, with progress shown as it goes).
3. reimport: the same file again, which must add nothing (Item.import_key and prompt hashes).
4. snapshot: `feedback.services.snapshot_create` of kind preference with include_imported=True
   (train/test JSONL, Parquet, save_to_disk and hf.tar).
5. load: `datasets.load_dataset("json", ...)` on the snapshot's JSONL, counting rows.

Setup (untimed): `manage.py migrate` and the project. Every step checks its
counts (N items, N judgements, 2N completions, N snapshot rows, nothing added by the re-import)
and the bench exits 1 if a check fails.

How to read it. The first line says how the database checks foreign keys during the import:
"by construction" when the role may set session_replication_role (devservices' role is a
superuser), so the per-row foreign-key triggers are off while rows go in (the import locks
what they would have locked); "row by row" otherwise, which costs the server about twice the
CPU (see feedback/services/imports/writing.py). Then one line per step:

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

The summary line gives each step's seconds, the largest peak RSS, and whether the goal was met.
The goal (data issue): a million rows each way, import, re-import and snapshot, in under 60 s
on a 2-core machine, with memory flat: peak memory that does not grow with --rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
POSTGRES_SCHEMES = {"postgres", "postgresql", "pgsql", "postgis"}
STEPS = ("generate", "import", "reimport", "snapshot", "load")
GOAL_SECONDS = 60.0
GOAL_STEPS = ("import", "reimport", "snapshot")


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
    return args


def app_env(args: argparse.Namespace) -> dict[str, str]:
    """Production settings (DEBUG off, so no query log grows with the rows) on that database."""
    env = dict(os.environ)
    env.pop("VEREDICTO_TESTING", None)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=args.database_url,
        DEBUG="0",
        SECRET_KEY="bench-only",
        MEDIA_ROOT=str(args.workdir / "media"),
        LOG_LEVEL="WARNING",
    )
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
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        version = cursor.fetchone()[0]
        cursor.execute("SELECT has_parameter_privilege('session_replication_role', 'SET')")
        by_construction = cursor.fetchone()[0]
    keys = "by construction" if by_construction else "row by row"
    return {"project": project.pk, "postgres": version, "keys": keys}


def import_once(args: argparse.Namespace) -> dict[str, Any]:
    from feedback.models import Project
    from feedback.services import ImportOptions, import_file

    project = Project.objects.get(pk=args.project)
    before = _counts(project.pk)
    progress = Progress(args.rows)
    started = time.perf_counter()
    report = import_file(
        project=project,
        path=data_file(args),
        options=ImportOptions(),
        progress=progress,
    )
    seconds = time.perf_counter() - started
    progress.close()
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
    work = {"import": import_once, "reimport": import_once, "snapshot": snapshot, "load": load}
    with StepMonitor(connection.connection.info.backend_pid) as monitor:
        result = work[args.step](args)
    return {**result, **monitor.result(), "rss_start": rss}


# --- The parent: run every step in its own process -------------------------------------------


@dataclass
class StepResult:
    name: str
    result: dict[str, Any]
    peak_rss: int  # bytes, of the step's process tree
    wall: float


def spawn(args: argparse.Namespace, step: str, **extra: int) -> StepResult:
    argv = [sys.executable, __file__, "--step", step, "--rows", str(args.rows)]
    argv += ["--seed", str(args.seed), "--workdir", str(args.workdir)]
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


def report(args: argparse.Namespace, results: list[StepResult], facts: dict[str, Any]) -> int:
    n = args.rows
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"\nbench/import_export.py: {n:,} preference rows; Python {platform.python_version()}, "
        f"PostgreSQL {facts['postgres']}, {os.cpu_count()} CPUs, load average now {load}; "
        f"foreign keys checked {facts['keys']}"
    )
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
    print(
        f"\nsummary: {n:,} rows; "
        + ", ".join(f"{name} {by_name[name].result['seconds']:.1f} s" for name in STEPS[1:])
        + f"; peak RSS {mib(peak)}; goal ({GOAL_SECONDS:.0f} s each way): {goal}; "
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

    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    log("migrate")
    subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=REPO,
        env=app_env(args),
        check=True,
    )
    facts = spawn(args, "setup").result
    ids = {"project": facts["project"]}
    results = []
    for step in STEPS:
        log(f"{step}: {args.rows:,} rows")
        results.append(spawn(args, step, **(ids if step != "generate" else {})))
        log(f"{step}: {results[-1].result['seconds']:.1f} s")
    status = report(args, results, facts)
    shutil.rmtree(args.workdir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
