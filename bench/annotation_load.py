"""Load test of the annotation loop: simulated annotators doing next-task + submit over HTTP.

Run it on a throwaway PostgreSQL, which config/devservices.py starts (it exports
TEST_DATABASE_URL and TEST_REDIS_URL and removes both servers afterwards):

    .venv/bin/python config/devservices.py test -- .venv/bin/python bench/annotation_load.py

    # open loop: 1,000 annotators at 30 s a task is 33 submits/s, for 30 s
    .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/annotation_load.py --rate 33 --duration 30

    # the no-JavaScript flow: submit -> 302 -> work -> 302 -> task page
    .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/annotation_load.py --flow plain

    # the token API as a labelling client drives it: POST next, POST pairwise, with a bearer
    # token; a 10,000-item project at overlap 1, and again with 90% of it already done
    .venv/bin/python config/devservices.py test -- .venv/bin/python bench/annotation_load.py \\
        --flow api --overlap 1 --tasks 2000 --items 10000 [--done-share 0.9]

Setup (untimed): `manage.py migrate` and `collectstatic` against the database, a pairwise project
with `--overlap` k, --tasks/k items (a prompt and two markdown completions each), the annotator
users, and gunicorn serving config.wsgi on a free loopback port with DEBUG off. Each simulated
annotator logs in and keeps one keep-alive HTTP/1.1 connection, spoken by hand over asyncio
streams so that the client stays light on the CPU it shares with the server.

Closed loop (default): every annotator submits as fast as it can until --tasks judgements are in
or its queue is empty. Open loop (--rate): submits arrive on a fixed schedule across a pool of
annotators whatever the server's pace; latency is measured from the scheduled time, so queueing
counts. Afterwards the database is checked for over-assignment. Exit status 1 when any request
failed or any invariant is broken. bench/README.md explains how to read the output.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import re
import resource
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

REPO = Path(__file__).resolve().parent.parent
LOG_DIR = REPO / "var" / "tmp" / "annotation-load"
HOST = "127.0.0.1"
PASSWORD = "bench-annotator-password"  # throwaway users on a throwaway database
POSTGRES_SCHEMES = {"postgres", "postgresql", "pgsql", "postgis"}
TASK_PATH = re.compile(r"/tasks/(\d+)/")
HTTP_LOGIN_LIMIT = 64  # above this many annotators, --login auto writes sessions directly
MAX_ERRORS = 200  # give up on a run that is only producing errors
DRAIN_SECONDS = 60  # open loop: how long to wait for answers after the last scheduled submit
ERRORS_SHOWN = 5
NOISY_SHARE = 0.05  # warn when other processes used more than this share of the CPU

# The goals on a 2-core machine.
GOAL_THROUGHPUT = 170.0  # judgements/s, closed loop with 32 annotators
GOAL_OPEN_P99_MS = 100.0  # submit p99 at 33 requests/s open loop


# --- Configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    database_url: str
    annotators: int
    tasks: int
    overlap: int
    flow: str  # "htmx", "plain" or "api"
    rate: float | None  # open loop when set
    duration: float
    arrivals: str  # "poisson" or "uniform"
    workers: int
    worker_class: str  # "sync" or "gthread"
    threads: int
    keep_alive: int
    login: str  # "http", "session" or "auto"
    seed: int
    min_items: int = 0  # --items: a bigger project than the run needs (queue scaling)
    done_share: float = 0.0  # --done-share: this share of the items judged before the run
    warmup: int = 0  # --warmup: judgements before the timed phase, then ANALYZE

    @property
    def open_loop(self) -> bool:
        return self.rate is not None

    @property
    def items(self) -> int:
        """tasks/k items; an open loop also needs a lease per annotator plus its arrivals."""
        needed = self.tasks + self.warmup
        if self.rate is not None:
            needed = max(needed, round(1.5 * (self.annotators + self.rate * self.duration)))
        open_needed = -(-needed // self.overlap)
        if self.done_share:  # the run needs its open items on top of the done ones
            open_needed = math.ceil(open_needed / (1 - self.done_share))
        return max(self.min_items, open_needed)

    @property
    def done_items(self) -> int:
        return int(self.items * self.done_share)

    @property
    def http_login(self) -> bool:
        if self.flow == "api":
            return False  # a bearer token each, no session
        return self.login == "http" or (
            self.login == "auto" and self.annotators <= HTTP_LOGIN_LIMIT
        )

    @property
    def server_label(self) -> str:
        if self.worker_class == "gthread":
            return f"{self.workers} gthread workers x {self.threads} threads"
        return f"{self.workers} sync workers"


def parse_args(argv: list[str] | None = None) -> Config:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    parser.add_argument(
        "--database-url",
        default=default_url,
        help="PostgreSQL to use (default: $TEST_DATABASE_URL, else $DATABASE_URL)",
    )
    parser.add_argument(
        "--annotators",
        type=int,
        help="simulated annotators (default 32 closed loop, 1000 open loop)",
    )
    parser.add_argument("--tasks", type=int, default=6000, help="judgements to submit")
    parser.add_argument("--overlap", type=int, default=3, help="judgements per item (k)")
    parser.add_argument(
        "--items",
        type=int,
        default=0,
        help="at least this many items (default: what the run needs); to check that the "
        "cost per judgement does not grow with the project",
    )
    parser.add_argument(
        "--flow",
        choices=["htmx", "plain", "api"],
        default="htmx",
        help="htmx: the browser's form posts; plain: without JavaScript; api: the token API",
    )
    parser.add_argument(
        "--done-share",
        type=float,
        default=0.0,
        help="judge this share of the items (overlap times each, by other users) before the run",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=0,
        help="untimed judgements first, then ANALYZE, as autovacuum does in a deployment's "
        "first minute (default 0: the timed phase starts on the statistics of the load)",
    )
    parser.add_argument("--rate", type=float, help="open loop: submits per second")
    parser.add_argument("--duration", type=float, default=30.0, help="open loop: seconds")
    parser.add_argument("--arrivals", choices=["poisson", "uniform"], default="poisson")
    parser.add_argument("--workers", type=int, default=3, help="gunicorn worker processes")
    parser.add_argument("--worker-class", choices=["sync", "gthread"], default="sync")
    parser.add_argument("--threads", type=int, default=4, help="threads per gthread worker")
    parser.add_argument("--keep-alive", type=int, default=5, help="gunicorn --keep-alive (s)")
    parser.add_argument(
        "--login",
        choices=["auto", "http", "session"],
        default="auto",
        help="http: POST /accounts/login/ per annotator (PBKDF2, ~0.4 s of server CPU each); "
        "session: write the session rows directly, as Client.force_login does; "
        f"auto: http up to {HTTP_LOGIN_LIMIT} annotators",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database: run under config/devservices.py test, or pass --database-url")
    if urlsplit(args.database_url).scheme not in POSTGRES_SCHEMES:
        parser.error(f"refusing {urlsplit(args.database_url).scheme or 'that'}: needs PostgreSQL")
    annotators = args.annotators or (1000 if args.rate else 32)
    if annotators < args.overlap:
        parser.error("--annotators must be at least --overlap, or items can never fill")
    if args.rate is not None and args.rate <= 0:
        parser.error("--rate must be positive")
    if not 0 <= args.done_share < 1:
        parser.error("--done-share must be in [0, 1)")
    if args.warmup < 0:
        parser.error("--warmup must be 0 or more")
    return Config(
        database_url=args.database_url,
        annotators=annotators,
        tasks=args.tasks,
        overlap=args.overlap,
        flow=args.flow,
        rate=args.rate,
        duration=args.duration,
        arrivals=args.arrivals,
        workers=args.workers,
        worker_class=args.worker_class,
        threads=args.threads if args.worker_class == "gthread" else 1,
        keep_alive=args.keep_alive,
        login=args.login,
        seed=args.seed,
        min_items=args.items,
        done_share=args.done_share,
        warmup=args.warmup,
    )


def app_env(cfg: Config) -> dict[str, str]:
    """The environment of the app, here and in gunicorn: production settings on plain HTTP."""
    env = dict(os.environ)
    env.pop("VEREDICTO_TESTING", None)
    env.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=cfg.database_url,
        DEBUG="0",
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS=HOST,
        DB_CONN_MAX_AGE="600",
        # No TLS proxy in front: otherwise every request is redirected to https.
        SECURE_SSL_REDIRECT="0",
        SESSION_COOKIE_SECURE="0",
    )
    if os.environ.get("TEST_REDIS_URL"):
        env["REDIS_URL"] = os.environ["TEST_REDIS_URL"]
    return env


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- Database setup and checks (untimed) ----------------------------------------------------


def prepare_database(cfg: Config) -> None:
    env = app_env(cfg)
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        # collectstatic: with DEBUG off the manifest storage needs var/static to render pages.
        subprocess.run(
            [sys.executable, "manage.py", *command, "-v", "0"], cwd=REPO, env=env, check=True
        )
    os.environ.update(env)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.db import connection

    if connection.vendor != "postgresql":
        sys.exit(f"refusing to run on {connection.vendor}: the bench needs PostgreSQL")


_VOCABULARY = (
    "model answer question value function list error result example code test order page file "
    "line case number option setting request query cache server client table index key loop "
    "memory thread process output input string integer record field batch queue worker lock "
    "reply prompt user step reason detail change version module package method class object"
)
WORDS = _VOCABULARY.split()
LANGUAGES = ("python", "sql", "bash", "javascript")


def _sentence(rng: random.Random) -> str:
    words = rng.choices(WORDS, k=rng.randint(7, 15))
    if rng.random() < 0.3:
        words[rng.randrange(len(words))] = f"`{rng.choice(WORDS)}()`"
    if rng.random() < 0.2:
        index = rng.randrange(len(words))
        words[index] = f"**{words[index]}**"
    return " ".join(words).capitalize() + "."


def _block(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.4:
        return " ".join(_sentence(rng) for _ in range(rng.randint(1, 3)))
    if kind < 0.65:
        marker = rng.choice(["-", "1."])
        return "\n".join(f"{marker} {_sentence(rng)}" for _ in range(rng.randint(2, 4)))
    if kind < 0.85:
        lines = [f"{rng.choice(WORDS)} = {rng.choice(WORDS)}({rng.randint(0, 99)})"]
        lines += [f"print({rng.choice(WORDS)})" for _ in range(rng.randint(1, 3))]
        return f"```{rng.choice(LANGUAGES)}\n" + "\n".join(lines) + "\n```"
    return "### " + " ".join(rng.choices(WORDS, k=rng.randint(2, 4))).capitalize()


def markdown_reply(rng: random.Random) -> str:
    """A model reply: paragraphs, lists, code and headings, about 300 to 800 characters."""
    target = rng.randint(300, 700)
    blocks = [" ".join(_sentence(rng) for _ in range(2))]
    while sum(len(b) + 2 for b in blocks) < target:
        blocks.append(_block(rng))
    return "\n\n".join(blocks)


def conversation(rng: random.Random, index: int) -> list[dict[str, str]]:
    question = f"Question {index}: " + " ".join(_sentence(rng) for _ in range(rng.randint(1, 3)))
    if rng.random() < 0.25:  # some prompts are a follow-up in a longer conversation
        return [
            {"role": "user", "content": _sentence(rng)},
            {"role": "assistant", "content": markdown_reply(rng)},
            {"role": "user", "content": question},
        ]
    return [{"role": "user", "content": question}]


@dataclass
class Dataset:
    project_id: int
    user_ids: list[int]
    usernames: list[str]
    reply_chars: float
    tokens: list[str] = field(default_factory=list)  # --flow api: one bearer token each
    judged_before: int = 0  # --done-share: judgements written before the run


def create_dataset(cfg: Config) -> Dataset:
    """The rows the services would create, written with bulk_create for speed: the project
    through project_create, then Prompt (cleaned, content_hash unique per project), two
    Completions, an Item and ItemCompletion positions 0/1 per item, and annotator users."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.hashers import make_password
    from django.contrib.auth.models import Group
    from django.db import transaction

    from core.roles import Role
    from feedback import services
    from feedback.demo import GUIDELINES
    from feedback.models import (
        Completion,
        CompletionSource,
        Item,
        ItemCompletion,
        Prompt,
        TaskKind,
    )
    from feedback.services.projects import prompt_hash

    rng = random.Random(cfg.seed)
    tag = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    with transaction.atomic():
        project = services.project_create(
            name=f"Load test {tag}",
            description="Created by bench/annotation_load.py",
            task_kinds=[TaskKind.PAIRWISE],
            overlap=cfg.overlap,
            guidelines=GUIDELINES,
        )
        prompts = []
        for index in range(cfg.items):
            system, messages = services.clean_messages(conversation(rng, index))
            prompts.append(
                Prompt(
                    project=project,
                    system=system,
                    messages=messages,
                    content_hash=prompt_hash(system, messages),
                    source="bench",
                    external_id=str(index),
                )
            )
        Prompt.objects.bulk_create(prompts, batch_size=1000)
        completions = [
            Completion(
                prompt=prompt,
                text=services.clean_text(markdown_reply(rng), field="completion"),
                model_name=f"bench-{side}",
                source=CompletionSource.MODEL,
            )
            for prompt in prompts
            for side in "ab"
        ]
        Completion.objects.bulk_create(completions, batch_size=1000)
        items = Item.objects.bulk_create(
            [Item(project=project, kind=TaskKind.PAIRWISE, prompt=p) for p in prompts],
            batch_size=1000,
        )
        ItemCompletion.objects.bulk_create(
            [
                ItemCompletion(
                    item=item, completion=completions[2 * i + position], position=position
                )
                for i, item in enumerate(items)
                for position in (0, 1)
            ],
            batch_size=2000,
        )

        User = get_user_model()
        hashed = make_password(PASSWORD)  # one PBKDF2 run, shared by every bench user
        users = User.objects.bulk_create(
            [User(username=f"bench-{tag}-{i:04d}", password=hashed) for i in range(cfg.annotators)],
            batch_size=1000,
        )
        for role in Role:
            Group.objects.get_or_create(name=role.value)
        group = Group.objects.get(name=Role.ANNOTATOR)
        User.groups.through.objects.bulk_create(
            [User.groups.through(user_id=u.pk, group_id=group.pk) for u in users], batch_size=1000
        )
        judged_before = judge_in_advance(cfg, items, tag)
        tokens = []
        if cfg.flow == "api":
            from core.tokens import token_create

            tokens = [token_create(user=user, name="bench")[1] for user in users]
    # Statistics for the planner, as the import service leaves them after a large import
    # (feedback/services/imports/postgres.py) and autovacuum soon after bulk writes: without
    # them the queue's candidate query is planned for empty tables (146 ms instead of 1 ms on
    # a 10,000-item project), which measures a state no deployment stays in.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    reply_chars = sum(len(c.text) for c in completions) / len(completions)
    return Dataset(
        project.pk,
        [u.pk for u in users],
        [u.username for u in users],
        reply_chars,
        tokens=tokens,
        judged_before=judged_before,
    )


def judge_in_advance(cfg: Config, items: list, tag: str) -> int:
    """The first --done-share of the items, judged `overlap` times each by users who are not in
    the run, as the services leave them: a submitted slot, a judgement, submitted_count = k."""
    from django.contrib.auth import get_user_model
    from django.utils import timezone

    from feedback.models import Assignment, AssignmentStatus, Item, PairwiseJudgement

    done = items[: cfg.done_items]
    if not done:
        return 0
    User = get_user_model()
    past = User.objects.bulk_create(
        [User(username=f"bench-{tag}-past-{i}") for i in range(cfg.overlap)]
    )
    now = timezone.now()
    slots = Assignment.objects.bulk_create(
        [
            Assignment(
                item=item,
                annotator=user,
                status=AssignmentStatus.SUBMITTED,
                leased_at=now,
                expires_at=now,
                finished_at=now,
            )
            for item in done
            for user in past
        ],
        batch_size=2000,
    )
    PairwiseJudgement.objects.bulk_create(
        [
            PairwiseJudgement(
                assignment=slot,
                item=slot.item,
                annotator=slot.annotator,
                choice="a",
                shown_left="a",
            )
            for slot in slots
        ],
        batch_size=2000,
    )
    # Items were bulk-created in order: the done ones are a prefix of the project's ids.
    Item.objects.filter(project_id=done[0].project_id, pk__lte=done[-1].pk).update(
        submitted_count=cfg.overlap
    )
    return len(slots)


def direct_session_cookies(user_ids: list[int]) -> list[dict[str, str]]:
    """Logged-in cookies without the login form, the way django.test.Client.force_login does
    it: django.contrib.auth.login() on a bare request, then the session saved."""
    from importlib import import_module

    from django.conf import settings
    from django.contrib.auth import get_user_model, load_backend, login
    from django.http import HttpRequest

    engine = import_module(settings.SESSION_ENGINE)
    # The backend that loads the user of a session: django-axes' comes first and only counts.
    backend = next(
        path for path in settings.AUTHENTICATION_BACKENDS if hasattr(load_backend(path), "get_user")
    )
    users = get_user_model().objects.in_bulk(user_ids)
    jars = []
    for user_id in user_ids:
        request = HttpRequest()
        request.session = engine.SessionStore()
        login(request, users[user_id], backend=backend)
        request.session.save()
        jars.append(
            {
                settings.SESSION_COOKIE_NAME: request.session.session_key,
                settings.CSRF_COOKIE_NAME: request.META["CSRF_COOKIE"],
            }
        )
    return jars


@dataclass
class Integrity:
    judgements: int
    over_judged: int  # items with more than k judgements
    over_slots: int  # items with more than k live slots (submitted + unexpired leases)
    duplicate_pairs: int  # (item, annotator) pairs judged twice
    count_drift: int  # items whose submitted_count differs from their human judgements
    live_leases: int

    @property
    def over_assigned(self) -> int:
        return self.over_judged + self.over_slots

    def count_ok(self, client: int, abandoned: int) -> bool:
        """The client's count, plus up to one per request abandoned in flight."""
        return client <= self.judgements <= client + abandoned


def check_integrity(project_id: int, overlap: int, judged_before: int = 0) -> Integrity:
    from django.db.models import Count, F, Q
    from django.utils import timezone

    from feedback.models import (
        Assignment,
        AssignmentStatus,
        Item,
        Origin,
        PairwiseJudgement,
        live_lease_q,
    )

    # Imported labels take none of an item's k slots (README "Data in and out"): the
    # invariants are about the judgements annotators made.
    judgements = (
        PairwiseJudgement.objects.filter(item__project_id=project_id)
        .exclude(origin=Origin.IMPORTED)
        .order_by()
    )
    slots = Assignment.objects.filter(live_lease_q(), item__project_id=project_id).order_by()
    items = Item.objects.filter(project_id=project_id).order_by()

    def groups_over(queryset, fields: tuple[str, ...], limit: int) -> int:
        return queryset.values(*fields).annotate(n=Count("pk")).filter(n__gt=limit).count()

    return Integrity(
        judgements=judgements.count() - judged_before,
        over_judged=groups_over(judgements, ("item",), overlap),
        over_slots=groups_over(slots, ("item",), overlap),
        duplicate_pairs=groups_over(judgements, ("item", "annotator"), 1),
        count_drift=items.annotate(
            n=Count("pairwisejudgement", filter=~Q(pairwisejudgement__origin=Origin.IMPORTED))
        )
        .exclude(submitted_count=F("n"))
        .count(),
        live_leases=slots.filter(
            status=AssignmentStatus.LEASED, expires_at__gt=timezone.now()
        ).count(),
    )


def postgres_facts() -> tuple[str, int | None]:
    """('PostgreSQL 18.1, fsync=off, synchronous_commit=off', postmaster pid if local)."""
    from django.db import connection

    with connection.cursor() as cursor:
        values = {}
        for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers"):
            cursor.execute(f"SHOW {name}")
            values[name] = cursor.fetchone()[0]
        cursor.execute("SELECT pg_backend_pid()")
        backend = cursor.fetchone()[0]
    facts = f"PostgreSQL {values.pop('server_version')}, " + ", ".join(
        f"{k}={v}" for k, v in values.items()
    )
    stat = _proc_stat(backend)
    postmaster = stat[0] if stat and _proc_name(stat[0]) == "postgres" else None
    return facts, postmaster


def redis_pid() -> int | None:
    """The local Redis server's pid (the app keeps sessions and rendered markdown there)."""
    from django.conf import settings
    from redis import Redis
    from redis.exceptions import RedisError

    try:
        pid = int(Redis.from_url(settings.REDIS_URL).info("server")["process_id"])
    except (RedisError, KeyError, ValueError):
        return None
    return pid if _proc_name(pid).startswith("redis") else None


# --- CPU accounting -------------------------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _proc_name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds of the process and its reaped children)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # fields from the 3rd (state) on
    ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
    return int(fields[1]), ticks / CLOCK_TICKS


def tree_cpu_seconds(root: int | None) -> float | None:
    """CPU seconds used so far by `root` and every live descendant (exited ones via cutime)."""
    if root is None:
        return None
    stats: dict[int, tuple[int, float]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (stat := _proc_stat(int(entry.name))):
            stats[int(entry.name)] = stat
    if root not in stats:
        return None
    children = defaultdict(list)
    for pid, (ppid, _) in stats.items():
        children[ppid].append(pid)
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += stats[pid][1]
        todo += children[pid]
    return total


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass
class CpuSample:
    at: float
    gunicorn: float | None
    postgres: float | None
    redis: float | None
    client: float
    machine: tuple[int, int]

    @classmethod
    def take(cls, gunicorn_pid: int, postmaster_pid: int | None, redis: int | None) -> CpuSample:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return cls(
            at=time.perf_counter(),
            gunicorn=tree_cpu_seconds(gunicorn_pid),
            postgres=tree_cpu_seconds(postmaster_pid),
            redis=tree_cpu_seconds(redis),
            client=usage.ru_utime + usage.ru_stime,
            machine=machine_ticks(),
        )


def cpu_report(before: CpuSample, after: CpuSample) -> str:
    """Core-seconds per process tree over the run, as a share of all cores; "other" is whatever
    else kept the machine busy (another job on a shared machine skews the numbers)."""
    cores = os.cpu_count() or 1
    capacity = (after.at - before.at) * cores
    busy = capacity * (after.machine[0] - before.machine[0])
    busy /= max(1, after.machine[1] - before.machine[1])
    parts, accounted = [], 0.0
    for name in ("gunicorn", "postgres", "redis", "client"):
        start, end = getattr(before, name), getattr(after, name)
        if start is None or end is None:
            parts.append(f"{name} n/a")
            continue
        accounted += end - start
        parts.append(f"{name} {end - start:.1f} s ({100 * (end - start) / capacity:.0f}%)")
    other = max(0.0, busy - accounted)
    parts.append(f"other {other:.1f} s ({100 * other / capacity:.0f}%)")
    parts.append(f"idle {100 * (1 - busy / capacity):.0f}%")
    text = (
        f"CPU over the run ({cores} cores x {after.at - before.at:.1f} s = {capacity:.1f} "
        "core-seconds): " + ", ".join(parts)
    )
    if other > NOISY_SHARE * capacity:
        text += (
            f"\n  WARNING: other processes took {100 * other / capacity:.0f}% of the CPU; "
            "judgements/s and latencies are understated (rerun on a quiet machine)"
        )
    return text


def server_cost(before: CpuSample, after: CpuSample, judgements: int) -> str:
    """Server CPU per judgement: unlike judgements/s, it holds still when another job on the
    machine takes CPU, and it bounds throughput at cores / cost."""
    if None in (before.gunicorn, after.gunicorn, before.postgres, after.postgres) or not judgements:
        return "server CPU per judgement: n/a"
    app = 1000 * (after.gunicorn - before.gunicorn) / judgements
    db = 1000 * (after.postgres - before.postgres) / judgements
    # Redis (sessions, rendered markdown) counts when it is local; n/a leaves it out.
    cache = None
    if before.redis is not None and after.redis is not None:
        cache = 1000 * (after.redis - before.redis) / judgements
    total = app + db + (cache or 0.0)
    ceiling = (os.cpu_count() or 1) * 1000 / total
    parts = f"gunicorn {app:.1f} + postgres {db:.1f}"
    parts += f" + redis {cache:.1f}" if cache is not None else ", redis n/a"
    return (
        f"server CPU per judgement: {total:.1f} ms ({parts}); "
        f"{os.cpu_count()} cores cap this at ~{ceiling:.0f} judgements/s"
    )


# --- gunicorn -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the master stops its workers
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _stop_with_parent() -> None:
    """preexec_fn: the kernel sends gunicorn SIGTERM should this script die without cleanup."""
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start_gunicorn(cfg: Config) -> Server:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    port, log_path = free_port(), LOG_DIR / "gunicorn.log"
    argv = [
        sys.executable,
        "-m",
        "gunicorn",
        "config.wsgi:application",
        f"--bind={HOST}:{port}",
        f"--workers={cfg.workers}",
        f"--worker-class={cfg.worker_class}",
        f"--threads={cfg.threads}",
        f"--keep-alive={cfg.keep_alive}",
        "--timeout=60",
        f"--error-logfile={log_path}",
    ]
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            argv,
            cwd=REPO,
            env=app_env(cfg),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=_stop_with_parent,
        )
    server = Server(proc, port, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"gunicorn exited with {proc.returncode}; see {log_path}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), 1) as sock:
            sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {HOST}:{port}\r\n\r\n".encode())
            if sock.recv(64).startswith(b"HTTP/1.1 200"):
                return server
        time.sleep(0.1)
    server.stop()
    sys.exit(f"gunicorn did not answer /healthz in 60 s; see {log_path}")


# --- A minimal HTTP/1.1 client --------------------------------------------------------------


class ProtocolError(Exception):
    """The server said something this client does not understand."""


class StaleConnection(Exception):
    """A reused connection was closed before any byte of the response arrived."""


@dataclass
class Response:
    status: int
    headers: dict[str, str]  # lower-case names; the last value wins
    set_cookies: list[str]
    body: bytes
    keep_alive: bool

    def header(self, name: str) -> str:
        return self.headers.get(name, "")


async def read_response(reader: asyncio.StreamReader) -> Response:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise StaleConnection from None
        raise
    status_line, *lines = head[:-4].decode("latin-1").split("\r\n")
    version, status, *_ = status_line.split(" ", 2)
    headers: dict[str, str] = {}
    set_cookies: list[str] = []
    for line in lines:
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "set-cookie":
            set_cookies.append(value)
        headers[name] = value
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = await read_chunked(reader)
    elif "content-length" in headers:
        body = await reader.readexactly(int(headers["content-length"]))
    elif int(status) in (204, 304) or 100 <= int(status) < 200:
        body = b""
    elif not keep_alive:
        body = await reader.read()  # delimited by the close
    else:
        raise ProtocolError(f"{status_line}: no Content-Length on a keep-alive response")
    return Response(int(status), headers, set_cookies, body, keep_alive)


async def read_chunked(reader: asyncio.StreamReader) -> bytes:
    parts = []
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return b"".join(parts)
        parts.append(await reader.readexactly(size))
        await reader.readexactly(2)


class Connection:
    """One keep-alive connection, reopened when the server closed it (sync workers close after
    every response; gthread ones after --keep-alive seconds idle)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.connects = 0
        self.retries = 0

    async def request(self, head: bytes, body: bytes) -> Response:
        reused = self.writer is not None and self.reader is not None and not self.reader.at_eof()
        if not reused:
            await self._open()
        try:
            return await self._exchange(head, body)
        except (StaleConnection, ConnectionResetError, BrokenPipeError):
            # The server dropped an idle connection as we reused it: it never read the request,
            # so sending it again on a fresh connection is safe.
            if not reused:
                raise
            self.retries += 1
            await self._open()
            return await self._exchange(head, body)

    async def _exchange(self, head: bytes, body: bytes) -> Response:
        assert self.reader and self.writer
        try:
            self.writer.write(head + body)
            await self.writer.drain()
            response = await read_response(self.reader)
        except BaseException:
            self.close()
            raise
        if not response.keep_alive:
            self.close()
        return response

    async def _open(self) -> None:
        self.close()
        self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
        self.connects += 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# --- Simulated annotators -------------------------------------------------------------------


@dataclass
class Stats:
    latencies: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    body_bytes: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    samples: list[str] = field(default_factory=list)
    judgements: int = 0

    def record(self, endpoint: str, seconds: float, size: int) -> None:
        self.latencies[endpoint].append(seconds)
        self.body_bytes[endpoint] += size

    def error(self, endpoint: str, what: str) -> None:
        self.errors[endpoint] += 1
        if len(self.samples) < ERRORS_SHOWN:
            self.samples.append(f"{endpoint}: {what}")
        if sum(self.errors.values()) > MAX_ERRORS:
            raise SystemExit(f"more than {MAX_ERRORS} errors; first ones:\n" + self.error_text())

    def error_text(self) -> str:
        return "\n".join(f"  {sample}" for sample in self.samples)


class RequestFailed(Exception):
    """Counted in Stats.errors already; the annotator resynchronises or gives up."""


class Annotator:
    """One person at a browser: a cookie jar, one connection, the task on screen."""

    def __init__(self, name: str, port: int, project_id: int, cfg: Config, stats: Stats) -> None:
        self.name = name
        self.conn = Connection(port)
        self.origin = f"http://{HOST}:{port}"
        self.work_path = f"/projects/{project_id}/work/"
        self.cfg = cfg
        self.stats = stats
        self.rng = random.Random(f"{cfg.seed}:{name}")
        self.cookies: dict[str, str] = {}
        self.task_path: str | None = None
        self.done = False
        self.token = ""  # --flow api
        self.next_path = f"/api/projects/{project_id}/next"

    async def call(
        self,
        endpoint: str,
        method: str,
        path: str,
        *,
        form: dict[str, str] | None = None,
        payload: dict | None = None,
        htmx: bool = False,
        since: float | None = None,
        expect: tuple[int, ...] = (200,),
    ) -> Response:
        """One request. Latency runs from `since` (an open loop's scheduled time) or now."""
        body = urlencode(form).encode() if form is not None else b""
        if payload is not None:
            body = json.dumps(payload).encode()
        accept = "application/json" if self.token else "text/html,application/xhtml+xml"
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: {HOST}:{self.conn.port}",
            "User-Agent: annotation-load",
            f"Accept: {accept}",
        ]
        if self.token:
            lines.append(f"Authorization: Bearer {self.token}")
        if self.cookies:
            lines.append("Cookie: " + "; ".join(f"{k}={v}" for k, v in self.cookies.items()))
        if method == "POST":
            kind = (
                "application/json" if payload is not None else "application/x-www-form-urlencoded"
            )
            lines += [
                f"Origin: {self.origin}",
                f"Content-Type: {kind}",
                f"Content-Length: {len(body)}",
            ]
            if "csrftoken" in self.cookies:
                lines.append(f"X-CSRFToken: {self.cookies['csrftoken']}")
        if htmx:
            lines += [
                "HX-Request: true",
                "HX-Target: workspace",
                f"HX-Current-URL: {self.origin}{self.task_path}",
            ]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        start = time.perf_counter() if since is None else since
        try:
            response = await self.conn.request(head, body)
        except (OSError, asyncio.IncompleteReadError, StaleConnection, ProtocolError) as exc:
            self.stats.error(endpoint, f"{method} {path}: {exc!r}")
            raise RequestFailed from exc
        self.stats.record(endpoint, time.perf_counter() - start, len(response.body))
        self._store_cookies(response.set_cookies)
        if response.status not in expect:
            where = response.header("location") or response.body[:400].decode(errors="replace")
            self.stats.error(endpoint, f"{method} {path} -> {response.status}: {where}")
            raise RequestFailed
        return response

    def _store_cookies(self, set_cookies: list[str]) -> None:
        for raw in set_cookies:
            pair, *attributes = raw.split(";")
            name, _, value = pair.strip().partition("=")
            deleted = any(a.strip().lower() == "max-age=0" for a in attributes)
            if deleted or value in ("", '""'):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value

    async def login_over_http(self, username: str) -> None:
        await self.call("login", "GET", "/accounts/login/")
        form = {
            "csrfmiddlewaretoken": self.cookies.get("csrftoken", ""),
            "username": username,
            "password": PASSWORD,
            "next": "",
        }
        await self.call("login", "POST", "/accounts/login/", form=form, expect=(302,))
        if "sessionid" not in self.cookies:
            self.stats.error("login", f"{username}: no session cookie after login")
            raise RequestFailed

    async def open_next(self, since: float | None = None) -> None:
        """GET work (302 to the next task, or the empty-queue page), then the task page."""
        if self.cfg.flow == "api":
            await self.lease_over_api(since)
            return
        response = await self.call("work", "GET", self.work_path, since=since, expect=(200, 302))
        if response.status == 200:
            self.done, self.task_path = True, None
            return
        location = response.header("location")
        if not TASK_PATH.fullmatch(location):
            self.stats.error("work", f"redirected to {location!r}, not to a task")
            raise RequestFailed
        page = await self.call("task", "GET", location)
        if b'data-task-kind="pairwise"' not in page.body:
            self.stats.error("task", f"{location}: no pairwise workspace in the page")
            raise RequestFailed
        self.task_path = location

    async def lease_over_api(self, since: float | None = None) -> None:
        """POST next: 200 with the task (the current lease or a new one), 204 when none is left."""
        response = await self.call(
            "next", "POST", self.next_path, payload={}, since=since, expect=(200, 204)
        )
        if response.status == 204:
            self.done, self.task_path = True, None
            return
        task = json.loads(response.body)
        if len(task["item"]["completions"]) != 2:
            self.stats.error("next", f"assignment {task['id']}: not a pair of completions")
            raise RequestFailed
        self.task_path = f"/api/assignments/{task['id']}/pairwise"

    def judgement_json(self) -> dict:
        form = self.judgement_form()
        choice = {"left": "a", "right": "b"}.get(form["side"], form["side"])
        return {
            "choice": choice,
            "strength": form.get("strength", ""),
            "seconds_spent": float(form["seconds_spent"]),
        }

    def judgement_form(self) -> dict[str, str]:
        side = self.rng.choices(["left", "right", "tie", "both_bad"], weights=[4, 4, 1, 1])[0]
        form = {"side": side, "rationale": "", "seconds_spent": f"{self.rng.uniform(5, 90):.1f}"}
        if side in ("left", "right"):
            form["strength"] = self.rng.choice(["slight", "clear", "strong"])
        return form

    async def submit(self, since: float | None = None) -> None:
        """Judge the task on screen and move on to the next one, as the chosen flow does."""
        assert self.task_path is not None
        if self.cfg.flow == "api":
            await self.call(
                "submit", "POST", self.task_path, payload=self.judgement_json(), since=since
            )
            self.stats.judgements += 1
            await self.open_next()
            if since is not None:
                self.stats.record("cycle", time.perf_counter() - since, 0)
            return
        path = self.task_path + "submit/"
        if self.cfg.flow == "plain":
            response = await self.call(
                "submit", "POST", path, form=self.judgement_form(), since=since, expect=(302,)
            )
            if response.header("location") != self.work_path:
                self.stats.error("submit", f"redirected to {response.header('location')!r}")
                raise RequestFailed
            self.stats.judgements += 1
            await self.open_next()
            if since is not None:
                self.stats.record("cycle", time.perf_counter() - since, 0)
            return
        response = await self.call(
            "submit", "POST", path, form=self.judgement_form(), htmx=True, since=since
        )
        self.stats.judgements += 1
        pushed = response.header("hx-push-url")
        if TASK_PATH.fullmatch(pushed) and b'id="workspace"' in response.body:
            self.task_path = pushed
        elif pushed == self.work_path and b"No tasks left" in response.body:
            self.done, self.task_path = True, None
        else:
            self.stats.error("submit", f"HX-Push-Url {pushed!r} with an unexpected body")
            raise RequestFailed

    async def recover(self) -> None:
        """After a failed request, reload the work page as a person would; retire on failure."""
        try:
            await self.open_next()
        except RequestFailed:
            self.done = True


# --- The two load shapes --------------------------------------------------------------------


async def log_in_over_http(annotators: list[Annotator], parallel: int = 8) -> None:
    gate = asyncio.Semaphore(parallel)  # each login is ~0.4 s of PBKDF2 on the server

    async def one(annotator: Annotator) -> None:
        async with gate:
            await annotator.login_over_http(annotator.name)

    await asyncio.gather(*(one(a) for a in annotators))


async def closed_loop(cfg: Config, annotators: list[Annotator]) -> float:
    """Everyone as fast as possible until cfg.tasks judgements are in; returns wall seconds."""
    budget = [cfg.tasks]

    async def annotate(annotator: Annotator) -> None:
        try:
            await annotator.open_next()
        except RequestFailed:
            await annotator.recover()
        while not annotator.done and budget[0] > 0:
            budget[0] -= 1
            try:
                await annotator.submit()
            except RequestFailed:
                budget[0] += 1
                await annotator.recover()

    started = time.perf_counter()
    await asyncio.gather(*(annotate(a) for a in annotators))
    return time.perf_counter() - started


async def take_first_tasks(annotators: list[Annotator], parallel: int = 32) -> None:
    gate = asyncio.Semaphore(parallel)

    async def one(annotator: Annotator) -> None:
        async with gate:
            try:
                await annotator.open_next()
            except RequestFailed:
                await annotator.recover()

    await asyncio.gather(*(one(a) for a in annotators))


def arrival_offsets(cfg: Config, rng: random.Random) -> list[float]:
    assert cfg.rate is not None
    if cfg.arrivals == "uniform":
        return [i / cfg.rate for i in range(int(cfg.rate * cfg.duration))]
    offsets, at = [], rng.expovariate(cfg.rate)
    while at < cfg.duration:
        offsets.append(at)
        at += rng.expovariate(cfg.rate)
    return offsets


@dataclass
class OpenLoopResult:
    scheduled: int
    completed: int
    wall: float  # first scheduled arrival to the last response
    lags: list[float]  # how late each submit left the client (event loop, idle annotator)
    abandoned: int  # sent but unanswered DRAIN_SECONDS after the schedule ended
    unsent: int  # still waiting for an idle annotator then


async def open_loop(cfg: Config, annotators: list[Annotator]) -> OpenLoopResult:
    """Submits on a fixed schedule, whatever the server's pace, each by an idle annotator."""
    idle: asyncio.Queue[Annotator] = asyncio.Queue()
    for annotator in annotators:
        if not annotator.done:
            idle.put_nowait(annotator)
    offsets = arrival_offsets(cfg, random.Random(cfg.seed))
    lags: list[float] = []
    completed, in_flight = [0], [0]

    async def arrival(scheduled: float) -> None:
        annotator = await idle.get()
        lags.append(time.perf_counter() - scheduled)
        in_flight[0] += 1
        try:
            await annotator.submit(since=scheduled)
            completed[0] += 1
        except RequestFailed:
            await annotator.recover()
        finally:
            in_flight[0] -= 1
        if not annotator.done:
            idle.put_nowait(annotator)

    start = time.perf_counter() + 0.05
    pending = []
    for offset in offsets:
        delay = start + offset - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        pending.append(asyncio.create_task(arrival(start + offset)))
    wall = time.perf_counter() - start
    if pending:
        _, late = await asyncio.wait(pending, timeout=DRAIN_SECONDS)
        wall = time.perf_counter() - start
        abandoned = in_flight[0]
        for task in late:
            task.cancel()
    return OpenLoopResult(
        scheduled=len(offsets),
        completed=completed[0],
        wall=wall,
        lags=lags,
        abandoned=abandoned if pending else 0,
        unsent=len(late) - abandoned if pending else 0,
    )


# --- Reporting ------------------------------------------------------------------------------


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    index = max(0, min(len(sorted_values) - 1, -(-len(sorted_values) * q // 100) - 1))
    return sorted_values[int(index)]


def latency_table(stats: Stats, endpoints: tuple[str, ...]) -> tuple[list[str], dict]:
    rows = [
        f"  {'endpoint':<8} {'count':>6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'max ms':>8} {'errors':>6} {'body KB':>8}"
    ]
    summary = {}
    for endpoint in endpoints:
        values = sorted(stats.latencies.get(endpoint, []))
        if not values and not stats.errors.get(endpoint):
            continue
        p50, p90, p99 = (1000 * percentile(values, q) for q in (50, 90, 99))
        peak = 1000 * values[-1] if values else float("nan")
        size = stats.body_bytes[endpoint] / max(1, len(values)) / 1024
        rows.append(
            f"  {endpoint:<8} {len(values):>6} {p50:>8.1f} {p90:>8.1f} {p99:>8.1f} "
            f"{peak:>8.1f} {stats.errors.get(endpoint, 0):>6} {size:>8.1f}"
        )
        summary[endpoint] = (p50, p99)
    return rows, summary


def integrity_lines(found: Integrity, client: int, overlap: int, abandoned: int) -> list[str]:
    match = "matches" if found.count_ok(client, abandoned) else "MISMATCH with"
    if abandoned:
        match += f" {abandoned} abandoned in flight and"
    return [
        f"over-assigned items: {found.over_assigned} "
        f"(>{overlap} judgements: {found.over_judged}, >{overlap} live slots: {found.over_slots})",
        f"duplicate (item, annotator) judgements: {found.duplicate_pairs}",
        f"items whose submitted_count disagrees with their judgements: {found.count_drift}",
        f"judgements in the database: {found.judgements} ({match} the client's "
        f"{client}); live leases left: {found.live_leases}",
    ]


def gunicorn_version() -> str:
    from importlib.metadata import version

    return version("gunicorn")


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# --- Main -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    stats: Stats
    wall: float
    open_loop: OpenLoopResult | None
    cpu_before: CpuSample
    cpu_after: CpuSample
    connects: int
    retries: int
    warmed: int = 0  # judgements of the untimed warm-up


async def warm_up(cfg: Config, annotators: list[Annotator], stats: Stats) -> int:
    """--warmup judgements, untimed, then ANALYZE; returns how many were made. The load's ANALYZE
    saw no assignments yet: until autovacuum analyzes them (within a deployment's first minute),
    the queue's statements run on plans for an empty table, and each server connection keeps
    them in its prepared statements. This is that minute, passed before the clock starts;
    ANALYZE makes every connection plan again."""
    before = stats.judgements
    await closed_loop(dataclasses.replace(cfg, tasks=cfg.warmup, rate=None), annotators)
    await asyncio.to_thread(_analyze)  # Django's database calls may not run in the event loop
    return stats.judgements - before


def _analyze() -> None:
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
    finally:
        connection.close()


async def drive(
    cfg: Config,
    dataset: Dataset,
    server: Server,
    postmaster: int | None,
    cache_server: int | None,
    session_jars: list[dict[str, str]] | None,
) -> Outcome | None:
    """Log everyone in, take first tasks (open loop), then the timed phase. None on setup errors."""
    setup_stats, stats = Stats(), Stats()
    annotators = [
        Annotator(name, server.port, dataset.project_id, cfg, setup_stats)
        for name in dataset.usernames
    ]
    started = time.perf_counter()
    if cfg.flow == "api":
        for annotator, token in zip(annotators, dataset.tokens, strict=True):
            annotator.token = token
    elif session_jars is None:
        await log_in_over_http(annotators)
    else:
        for annotator, jar in zip(annotators, session_jars, strict=True):
            annotator.cookies.update(jar)
    how = "POST /accounts/login/" if session_jars is None else "sessions written directly"
    if cfg.flow == "api":
        how = "a bearer token each"
    log(f"{len(annotators)} annotators logged in ({how}) in {time.perf_counter() - started:.1f} s")
    warmed = 0
    if cfg.warmup:
        warmed = await warm_up(cfg, annotators, setup_stats)
        log(f"warm-up: {warmed} judgements, then ANALYZE")
    if cfg.open_loop:
        await take_first_tasks(annotators)
        log(f"first tasks taken; {sum(setup_stats.errors.values())} setup errors")
    if setup_stats.errors:
        print("setup errors:\n" + setup_stats.error_text())
        return None
    for annotator in annotators:  # count the timed phase only
        annotator.stats = stats
        annotator.conn.connects = annotator.conn.retries = 0

    before = CpuSample.take(server.proc.pid, postmaster, cache_server)
    result = None
    if cfg.open_loop:
        log(f"open loop: {cfg.rate:g} submits/s for {cfg.duration:g} s ({cfg.arrivals})")
        result = await open_loop(cfg, annotators)
        wall = result.wall
    else:
        log(f"closed loop: {cfg.annotators} annotators, {cfg.tasks} judgements")
        wall = await closed_loop(cfg, annotators)
    after = CpuSample.take(server.proc.pid, postmaster, cache_server)
    for annotator in annotators:
        annotator.conn.close()
    return Outcome(
        stats=stats,
        wall=wall,
        open_loop=result,
        cpu_before=before,
        cpu_after=after,
        connects=sum(a.conn.connects for a in annotators),
        retries=sum(a.conn.retries for a in annotators),
        warmed=warmed,
    )


def mode_label(cfg: Config) -> str:
    if cfg.open_loop:
        return f"open loop {cfg.rate:g}/s x {cfg.duration:g} s ({cfg.arrivals})"
    return "closed loop"


def goal_label(cfg: Config, rate: float, submit_p99: float) -> str:
    if cfg.open_loop:
        met = submit_p99 < GOAL_OPEN_P99_MS
        return f"goal submit p99 < {GOAL_OPEN_P99_MS:g} ms: {'met' if met else 'MISSED'}"
    met = rate >= GOAL_THROUGHPUT
    return f"goal >= {GOAL_THROUGHPUT:g} judgements/s: {'met' if met else 'MISSED'}"


def report(cfg: Config, dataset: Dataset, outcome: Outcome) -> int:
    """Print the results and the database checks; 1 when anything failed or is over-assigned."""
    stats, wall = outcome.stats, outcome.wall
    found = check_integrity(dataset.project_id, cfg.overlap, dataset.judged_before + outcome.warmed)
    facts, _ = postgres_facts()
    table, latency = latency_table(stats, ("work", "task", "next", "submit", "cycle"))
    errors = sum(stats.errors.values())
    rate = stats.judgements / wall if wall else 0.0
    cores = os.cpu_count()
    abandoned = outcome.open_loop.abandoned if outcome.open_loop else 0

    print(
        f"\nannotation_load: {mode_label(cfg)}, {cfg.flow} flow, {cfg.annotators} annotators, "
        f"k={cfg.overlap}"
    )
    print(f"  machine: {cores} CPUs ({cpu_model()}), Python {platform.python_version()}, {facts}")
    print(
        f"  server: gunicorn {gunicorn_version()}, {cfg.server_label}, keep-alive "
        f"{cfg.keep_alive} s, DB_CONN_MAX_AGE=600, DEBUG=0"
    )
    print(f"  data: {cfg.items} pairwise items, replies {dataset.reply_chars:.0f} chars on average")
    if dataset.judged_before:
        print(f"  {cfg.done_items} items ({cfg.done_share:.0%}) judged before the run")
    if outcome.warmed:
        print(f"  warm-up: {outcome.warmed} judgements, then ANALYZE, before the timed phase")
    print()
    if outcome.open_loop is not None:
        opened, lags = outcome.open_loop, sorted(outcome.open_loop.lags)
        print(
            f"  scheduled {opened.scheduled} submits ({opened.scheduled / cfg.duration:.1f}/s); "
            f"{opened.completed} completed in {wall:.2f} s ({opened.completed / wall:.1f}/s)"
        )
        if opened.abandoned or opened.unsent:
            print(
                f"  gave up {DRAIN_SECONDS} s after the schedule: {opened.abandoned} submits "
                f"unanswered, {opened.unsent} never sent (no idle annotator)"
            )
        if lags:
            print(
                f"  client send lag behind schedule: p50 {1000 * percentile(lags, 50):.1f} ms, "
                f"p99 {1000 * percentile(lags, 99):.1f} ms, max {1000 * lags[-1]:.1f} ms"
            )
        print("  latencies run from each submit's scheduled time (no coordinated omission)")
    print(f"  judgements: {stats.judgements} in {wall:.2f} s = {rate:.1f} judgements/s")
    print("\n".join(table))
    print(
        f"  new connections during the run: {outcome.connects}; "
        f"stale keep-alive retries: {outcome.retries}"
    )
    print(f"  errors: {errors}" + (f"; first ones:\n{stats.error_text()}" if errors else ""))
    print("  " + cpu_report(outcome.cpu_before, outcome.cpu_after))
    print("  " + server_cost(outcome.cpu_before, outcome.cpu_after, stats.judgements))
    for line in integrity_lines(found, stats.judgements, cfg.overlap, abandoned):
        print("  " + line)

    submit_p50, submit_p99 = latency.get("submit", (float("nan"), float("nan")))
    print(
        f"\nSUMMARY: {mode_label(cfg)}, {cfg.flow} flow, {cfg.annotators} annotators, "
        f"k={cfg.overlap}, {cfg.items} items ({cfg.done_share:.0%} done before"
        f"{f', {outcome.warmed} warm-up judgements' if outcome.warmed else ''}): "
        f"{stats.judgements} judgements in {wall:.1f} s = {rate:.1f}/s; submit "
        f"p50 {submit_p50:.0f} ms p99 {submit_p99:.0f} ms; errors {errors}; over-assigned "
        f"{found.over_assigned}; duplicate judgements {found.duplicate_pairs}; DB/client "
        f"{found.judgements}/{stats.judgements}; {goal_label(cfg, rate, submit_p99)} "
        f"[{cores} cores, gunicorn {cfg.server_label}, {facts.split(',')[0]}]"
    )
    broken = (
        errors
        or found.over_assigned
        or found.duplicate_pairs
        or found.count_drift
        or not found.count_ok(stats.judgements, abandoned)
    )
    return 1 if broken else 0


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    # SIGTERM (devservices forwards it) unwinds like Ctrl-C, so gunicorn is stopped.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1,000 connections need the fds
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    started = time.perf_counter()
    log("migrate + collectstatic")
    prepare_database(cfg)
    dataset = create_dataset(cfg)
    jars = None if cfg.http_login or cfg.flow == "api" else direct_session_cookies(dataset.user_ids)
    _, postmaster = postgres_facts()
    cache_server = redis_pid()
    from django.db import connection

    connection.close()  # idle during the run; reopened for the checks
    log(
        f"created {cfg.items} items and {cfg.annotators} annotators in "
        f"{time.perf_counter() - started:.1f} s; starting gunicorn ({cfg.server_label})"
    )
    server = start_gunicorn(cfg)
    try:
        outcome = asyncio.run(drive(cfg, dataset, server, postmaster, cache_server, jars))
    finally:
        server.stop()
    return 1 if outcome is None else report(cfg, dataset, outcome)


if __name__ == "__main__":
    sys.exit(main())
