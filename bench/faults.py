"""Annotation under faults: 32 annotators submit while Redis is stopped for 20 s and PostgreSQL
is restarted once; nothing a client was told is saved may be missing.

    .venv/bin/python bench/faults.py                 # about 2 minutes

It starts a PostgreSQL and a Redis of its own (config/devservices.py, as the suite's outage
tests do: they must be stoppable), then gunicorn and the data set as bench/annotation_load.py
does (a pairwise project, k=3, `--tasks`/k items; DEBUG off, DB_CONN_MAX_AGE=600). Half the
annotators are browsers: a session cookie and its CSRF token, the task page, and the htmx
submit that answers with the next task. The other half are API clients with a Bearer token:
`POST /api/projects/{id}/next`, then `POST /api/assignments/{id}/pairwise` with an
`Idempotency-Key`. Each waits `--think` seconds between tasks.

A request that fails (refused or reset connection, a 5xx) is sent again unchanged, every
RETRY_DELAY seconds for up to RETRY_FOR seconds: the same form, or the same body and
Idempotency-Key, as a client that must not lose work does. A 4xx is an answer and is not retried.

Timeline, seconds from the start of the load: Redis stopped at --redis-at for --redis-for
seconds (then started empty, as after a crash without persistence); PostgreSQL restarted at
--postgres-at (fast shutdown: every session cut, open transactions rolled back; then started on
the same data); no new task after --duration; then the clients finish their retries.

The report: judgements confirmed to clients against judgements stored, compared assignment by
assignment (lost = confirmed but not stored; unconfirmed = stored but never confirmed, a client
that gave up); for each outage, the failed requests by client kind and the seconds from the
service's return to the last failure it caused; confirmed judgements per second in each phase;
the load average, since the machine may be shared. Exit status 1 if a judgement was lost or a
client gave up.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import annotation_load as load  # bench/, this script's folder


def _devservices():
    """config/devservices.py, loaded from its file: importing the config package would load
    the settings before this script has a database for them."""
    path = load.REPO / "config" / "devservices.py"
    spec = importlib.util.spec_from_file_location("devservices", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


devservices = _devservices()

RETRY_DELAY = 0.5  # seconds between tries of a failed request
RETRY_FOR = 60.0  # then the client gives up on it (and the run says so)
KINDS = ("browser", "api")
_STATUS = re.compile(r" -> (\d{3}):")


# --- What happened, and when ---------------------------------------------------------------


@dataclass
class Ledger:
    """Every failed request and every confirmed judgement, timed from the start of the load."""

    started: float = field(default_factory=time.perf_counter)
    failures: list[tuple[float, str, str]] = field(default_factory=list)  # (t, kind, what)
    confirmed: dict[str, dict[int, float]] = field(default_factory=lambda: defaultdict(dict))
    gave_up: list[str] = field(default_factory=list)
    faults: dict[str, tuple[float, float]] = field(default_factory=dict)  # name -> (down, back)
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))

    def now(self) -> float:
        return time.perf_counter() - self.started


class FaultStats(load.Stats):
    """One client's stats: a failure is recorded with its time (never a reason to stop the run,
    as annotation_load's Stats makes it after 200) and its status kept for the retry rule."""

    def __init__(self, kind: str, ledger: Ledger) -> None:
        super().__init__()
        self.kind, self.ledger = kind, ledger
        self.last_status: int | None = None

    def record(self, endpoint: str, seconds: float, size: int) -> None:
        self.ledger.latencies[f"{self.kind} {endpoint}"].append(seconds)

    def error(self, endpoint: str, what: str) -> None:
        found = _STATUS.search(what)
        self.last_status = int(found.group(1)) if found else None
        what = " ".join(what.split())[:120]
        self.ledger.failures.append((self.ledger.now(), self.kind, f"{endpoint}: {what}"))


class Browser(load.Annotator):
    """annotation_load's browser (cookies, CSRF header, the htmx submit and its next task),
    sending the same answer again when a submit is retried."""

    answer: dict[str, str] | None = None

    def judgement_form(self) -> dict[str, str]:
        if self.answer is None:
            self.answer = super().judgement_form()
        return self.answer

    def assignment_id(self) -> int:
        assert self.task_path is not None
        return int(load.TASK_PATH.fullmatch(self.task_path).group(1))


class ApiClient:
    """A script with a token: lease the next task, submit it with an Idempotency-Key."""

    def __init__(self, name: str, token: str, port: int, project_id: int, stats: FaultStats):
        self.name, self.token, self.project_id, self.stats = name, token, project_id, stats
        self.conn = load.Connection(port)
        self.assignment: int | None = None
        self.body: dict[str, str] = {}
        self.key = ""
        self.done = False

    async def call(self, endpoint: str, path: str, body: dict | None, expect: tuple[int, ...]):
        payload = json.dumps(body).encode() if body is not None else b""
        lines = [
            f"POST {path} HTTP/1.1",
            f"Host: {load.HOST}:{self.conn.port}",
            f"Authorization: Bearer {self.token}",
            "Content-Type: application/json",
            f"Content-Length: {len(payload)}",
        ]
        if self.key and body is not None:
            lines.append(f"Idempotency-Key: {self.key}")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        started = time.perf_counter()
        try:
            response = await self.conn.request(head, payload)
        except (OSError, asyncio.IncompleteReadError, load.StaleConnection) as exc:
            self.stats.error(endpoint, f"POST {path}: {exc!r}")
            raise load.RequestFailed from exc
        self.stats.record(endpoint, time.perf_counter() - started, len(response.body))
        if response.status not in expect:
            detail = response.body[:200].decode(errors="replace")
            self.stats.error(endpoint, f"POST {path} -> {response.status}: {detail}")
            raise load.RequestFailed
        return response

    async def lease(self) -> None:
        response = await self.call(
            "next", f"/api/projects/{self.project_id}/next", None, (200, 204)
        )
        if response.status == 204:
            self.done, self.assignment = True, None
            return
        self.assignment = json.loads(response.body)["id"]
        self.body = {"choice": random.choice("ab"), "strength": "clear"}
        self.key = str(uuid.uuid4())

    async def submit(self) -> None:
        await self.call("submit", f"/api/assignments/{self.assignment}/pairwise", self.body, (200,))


# --- The clients ---------------------------------------------------------------------------


async def until_answered(step, stats: FaultStats, what: str) -> bool:
    """Run `step` again after each failure that is not an answer (no response, a 5xx), until it
    succeeds or RETRY_FOR seconds have passed. False when it did not succeed."""
    deadline = None
    while True:
        try:
            await step()
            return True
        except load.RequestFailed:
            if stats.last_status is not None and 400 <= stats.last_status < 500:
                stats.ledger.gave_up.append(f"{what}: refused with {stats.last_status}")
                return False
            deadline = deadline or time.monotonic() + RETRY_FOR
            if time.monotonic() > deadline:
                stats.ledger.gave_up.append(f"{what}: no answer in {RETRY_FOR:g} s")
                return False
            await asyncio.sleep(RETRY_DELAY)


async def browse(client: Browser, until: float, think: float) -> None:
    ledger = client.stats.ledger
    while ledger.now() < until:
        if client.task_path is None and not await until_answered(
            client.open_next, client.stats, f"{client.name} work page"
        ):
            return
        if client.done:
            return
        assignment, client.answer = client.assignment_id(), None
        if not await until_answered(client.submit, client.stats, f"{client.name} submit"):
            return
        ledger.confirmed["browser"][assignment] = ledger.now()
        if client.done:
            return
        await asyncio.sleep(think)


async def script(client: ApiClient, until: float, think: float) -> None:
    ledger = client.stats.ledger
    while ledger.now() < until:
        if not await until_answered(client.lease, client.stats, f"{client.name} next"):
            return
        if client.done:
            return
        if not await until_answered(client.submit, client.stats, f"{client.name} submit"):
            return
        ledger.confirmed["api"][client.assignment] = ledger.now()
        await asyncio.sleep(think)


# --- The faults ----------------------------------------------------------------------------


@dataclass
class Services:
    postgres: devservices.Server
    redis: devservices.Server
    redis_dir: Path

    def stop_redis(self) -> None:
        devservices.stop_servers([self.redis])

    def start_redis(self) -> None:
        self.redis = devservices.start_redis(
            self.redis.url, self.redis_dir, "--save", "", "--appendonly", "no", temporary=False
        )

    def stop(self) -> None:
        devservices.stop_servers([self.postgres, self.redis])


def inject(cfg: Options, services: Services, ledger: Ledger) -> None:
    """The faults, on schedule, from the main thread while the clients run in another. Not from
    a worker thread: a server started there is sent SIGQUIT/SIGTERM when that thread ends (the
    kernel's parent-death signal follows the thread that forked it, see devservices)."""
    time.sleep(max(0.0, cfg.redis_at - ledger.now()))
    down = ledger.now()
    services.stop_redis()
    load.log(f"Redis stopped at {down:.1f} s")
    time.sleep(max(0.0, cfg.redis_at + cfg.redis_for - ledger.now()))
    services.start_redis()
    ledger.faults["Redis stopped"] = (down, ledger.now())
    load.log(f"Redis answering again at {ledger.now():.1f} s")

    time.sleep(max(0.0, cfg.postgres_at - ledger.now()))
    down = ledger.now()
    devservices.restart_postgres(services.postgres)
    ledger.faults["PostgreSQL restarted"] = (down, ledger.now())
    load.log(f"PostgreSQL restarted: down at {down:.1f} s, answering at {ledger.now():.1f} s")


# --- Setup and report ----------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    annotators: int
    browsers: int
    tasks: int
    think: float
    duration: float
    redis_at: float
    redis_for: float
    postgres_at: float
    workers: int


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=32)
    parser.add_argument("--browsers", type=int, help="how many are browsers (default: half)")
    parser.add_argument("--tasks", type=int, default=15000, help="the project gets tasks/3 items")
    parser.add_argument("--think", type=float, default=0.2, help="seconds between tasks")
    parser.add_argument("--duration", type=float, default=80.0, help="seconds of load")
    parser.add_argument("--redis-at", type=float, default=10.0)
    parser.add_argument("--redis-for", type=float, default=20.0)
    parser.add_argument("--postgres-at", type=float, default=50.0)
    parser.add_argument("--workers", type=int, default=3, help="gunicorn sync workers")
    args = parser.parse_args(argv)
    if not args.redis_at + args.redis_for < args.postgres_at < args.duration:
        parser.error("the faults must come one after the other, inside --duration")
    browsers = args.annotators // 2 if args.browsers is None else args.browsers
    return Options(
        args.annotators,
        browsers,
        args.tasks,
        args.think,
        args.duration,
        args.redis_at,
        args.redis_for,
        args.postgres_at,
        args.workers,
    )


def api_tokens(user_ids: list[int]) -> list[str]:
    from django.contrib.auth import get_user_model

    from core.tokens import token_create

    users = get_user_model().objects.in_bulk(user_ids)
    return [token_create(user=users[pk], name="faults bench")[1] for pk in user_ids]


def stored_assignments(project_id: int) -> set[int]:
    from feedback.models import PairwiseJudgement

    rows = PairwiseJudgement.objects.filter(item__project_id=project_id)
    return set(rows.values_list("assignment_id", flat=True))


def load_average() -> str:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def report(opts: Options, ledger: Ledger, stored: set[int], loads: tuple[str, str]) -> int:
    confirmed = {a for kind in KINDS for a in ledger.confirmed[kind]}
    lost, unconfirmed = confirmed - stored, stored - confirmed
    end = max([t for kind in KINDS for t in ledger.confirmed[kind].values()] + [opts.duration])
    print(
        f"\nfaults: {opts.annotators} annotators ({opts.browsers} browsers on the htmx form, "
        f"{opts.annotators - opts.browsers} API clients with Idempotency-Key), think "
        f"{opts.think:g} s, gunicorn {opts.workers} sync workers, {os.cpu_count()} CPUs"
    )
    print(f"  load before: {loads[0]}\n  load after:  {loads[1]}")
    print(
        f"  judgements confirmed to clients: {len(confirmed)} "
        + "("
        + ", ".join(f"{k} {len(ledger.confirmed[k])}" for k in KINDS)
        + ")"
        + f"; stored: {len(stored)}; lost: {len(lost)}; stored but never confirmed: "
        f"{len(unconfirmed)}"
    )
    names = list(ledger.faults)
    for index, name in enumerate(names):
        down, back = ledger.faults[name]
        upto = ledger.faults[names[index + 1]][0] if index + 1 < len(names) else end + 1
        failed = [(t, kind) for t, kind, _ in ledger.failures if down <= t < upto]
        by_kind = ", ".join(f"{k} {sum(1 for _, w in failed if w == k)}" for k in KINDS)
        after = [t for t, _ in failed if t >= back]
        recovered = max(after) - back if after else 0.0
        during = {k: _rate(ledger, k, down, back) for k in KINDS}
        print(
            f"  {name} at {down:.1f} s, answering again at {back:.1f} s "
            f"({back - down:.1f} s down): failed requests {len(failed)} ({by_kind}); "
            f"recovered {recovered:.1f} s after it answered; confirmed/s while down: "
            + ", ".join(f"{k} {v:.1f}" for k, v in during.items())
        )
    first = ledger.faults[names[0]][0] if names else opts.duration
    steady = [(0.0, first)]
    for index, name in enumerate(names):
        _, back = ledger.faults[name]
        upto = ledger.faults[names[index + 1]][0] if index + 1 < len(names) else opts.duration
        steady.append((back, upto))
    print(
        "  confirmed/s between outages: "
        + "; ".join(
            f"{a:.0f}-{b:.0f} s: " + ", ".join(f"{k} {_rate(ledger, k, a, b):.1f}" for k in KINDS)
            for a, b in steady
        )
    )
    print(
        "  answered requests, p50/p99 ms: "
        + "; ".join(
            f"{name} {len(v)}: {1000 * load.percentile(sorted(v), 50):.0f}/"
            f"{1000 * load.percentile(sorted(v), 99):.0f}"
            for name, v in sorted(ledger.latencies.items())
        )
    )
    before = [f for f in ledger.failures if f[0] < first]
    print(f"  failed requests before the first fault: {len(before)}")
    for t, kind, what in ledger.failures[:3] + ledger.failures[-2:]:
        print(f"    e.g. {t:.1f} s {kind} {what}")
    for line in ledger.gave_up[:5]:
        print(f"  GAVE UP: {line}")
    broken = bool(lost or unconfirmed or ledger.gave_up)
    print(
        f"\nSUMMARY: confirmed {len(confirmed)} = stored {len(stored)}: "
        f"{'yes' if not (lost or unconfirmed) else 'NO'}; lost {len(lost)}; gave up "
        f"{len(ledger.gave_up)}"
    )
    return 1 if broken else 0


def _rate(ledger: Ledger, kind: str, start: float, end: float) -> float:
    count = sum(1 for t in ledger.confirmed[kind].values() if start <= t < end)
    return count / max(end - start, 1e-9)


@dataclass
class Logins:
    browser_cookies: list[dict[str, str]]  # session and CSRF cookies, one jar per browser
    api_tokens: list[str]


def log_in(opts: Options, data: load.Dataset) -> Logins:
    """Sessions written as Client.force_login does (annotation_load), tokens as the token page
    makes them; then our database connection closed: it would not survive the restart."""
    from django.db import connection

    logins = Logins(
        load.direct_session_cookies(data.user_ids[: opts.browsers]),
        api_tokens(data.user_ids[opts.browsers :]),
    )
    connection.close()
    return logins


async def annotate(opts: Options, cfg: load.Config, port: int, data: load.Dataset,
                   logins: Logins, ledger: Ledger) -> None:  # fmt: skip
    clients = []
    browsers = zip(data.usernames[: opts.browsers], logins.browser_cookies, strict=True)
    for name, jar in browsers:
        browser = Browser(name, port, data.project_id, cfg, FaultStats("browser", ledger))
        browser.cookies.update(jar)
        clients.append(browse(browser, opts.duration, opts.think))
    for name, token in zip(data.usernames[opts.browsers :], logins.api_tokens, strict=True):
        client = ApiClient(name, token, port, data.project_id, FaultStats("api", ledger))
        clients.append(script(client, opts.duration, opts.think))
    await asyncio.gather(*clients)


def drive(opts: Options, cfg: load.Config, port: int, data: load.Dataset, logins: Logins,
          services: Services) -> Ledger:  # fmt: skip
    """The clients in a thread of their own, the faults from this one."""
    ledger = Ledger()
    load.log(f"load: {opts.browsers} browsers, {len(logins.api_tokens)} API clients")
    clients = threading.Thread(
        target=asyncio.run, args=(annotate(opts, cfg, port, data, logins, ledger),)
    )
    ledger.started = time.perf_counter()
    clients.start()
    try:
        inject(opts, services, ledger)
    finally:
        clients.join()
    return ledger


def main(argv: list[str] | None = None) -> int:
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    loads = [load_average()]
    postgres = devservices.start_postgres()
    redis_dir = Path(tempfile.mkdtemp(prefix="faults-redis-"))
    redis_url = f"redis://127.0.0.1:{devservices._free_port()}/0"
    redis = devservices.start_redis(
        redis_url, redis_dir, "--save", "", "--appendonly", "no", temporary=False
    )
    services = Services(postgres, redis, redis_dir)
    server = None
    try:
        os.environ["TEST_REDIS_URL"] = redis_url  # app_env gives it to the app as REDIS_URL
        args = {"--database-url": postgres.url, "--annotators": opts.annotators}
        args.update({"--tasks": opts.tasks, "--workers": opts.workers})
        cfg = load.parse_args([str(v) for pair in args.items() for v in pair])
        load.log("migrate + collectstatic")
        load.prepare_database(cfg)
        data = load.create_dataset(cfg)
        load.log(f"{cfg.items} items, {opts.annotators} annotators; starting gunicorn")
        logins = log_in(opts, data)
        server = load.start_gunicorn(cfg)
        ledger = drive(opts, cfg, server.port, data, logins, services)
        loads.append(load_average())
        stored = stored_assignments(data.project_id)
    finally:
        if server is not None:
            server.stop()
        services.stop()
        shutil.rmtree(redis_dir, ignore_errors=True)
    return report(opts, ledger, stored, (loads[0], loads[1]))


if __name__ == "__main__":
    sys.exit(main())
