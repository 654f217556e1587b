"""The records browser on a big project: page times of search and filters as an admin uses them.

Run it on a throwaway PostgreSQL, which config/devservices.py starts (it exports
TEST_DATABASE_URL and TEST_REDIS_URL and removes both servers afterwards), one timing run at a
time on a shared machine:

    flock /tmp/veredicto-bench.lock .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/records_browser.py                  # the figure: 1,000,000 rows

    # a quicker run while developing
    .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/records_browser.py --rows 50000

    # which queries each page ran and how long each took, in-process (Django's test Client)
    .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/records_browser.py --rows 50000 --queries

Setup (untimed; at a million rows about 13 minutes on a busy 2-core machine, most of it the
import, where PostgreSQL computes every text's tsvector; about 4 GB of database per million
rows): `manage.py migrate` and `collectstatic`, an admin (superuser), and a pairwise project
filled through the real import service (`feedback.services.import_file`) from a generated JSONL
file of --rows rows: 75% preference rows (imported pairwise judgements), 20% prompts with two
model replies and no label yet, 5% SFT rows (imported demonstrations); 10% of the prompts in the
test split. The text is drawn from a 20,000-word vocabulary with Zipf's frequencies (the bench's
real words first, so "model" is the commonest word), which gives the search common, middling and
rare words and phrases as real text has them. Then human work on three in five of the unlabelled
pairs: three judgements each (the project's overlap) from 36 annotators whose shares of the work
differ tenfold, a tenth of it marked simulated, written with bulk_create as the services would
leave it (submitted assignment, judgement, submitted_count); 1% of the imported pairs marked
gold; VACUUM ANALYZE, as autovacuum would leave a table that has settled.

The timed part: gunicorn serving config.wsgi (DEBUG=0, one sync worker, DB_CONN_MAX_AGE=600,
the settings of bench/annotation_load.py) and one admin's browser asking for one page at a time
over a keep-alive connection: every URL of the list below --warmup times, untimed, then
--repeats rounds over the whole list (the URLs interleaved, so that a burst of load from other
processes falls on all of them alike). A page's time is from sending the request to the last
byte of the answer. Per URL the report gives p50, p95 and max, the count the page showed, and
where the time went: CPU of the gunicorn worker ("app") and of its PostgreSQL backend ("db"),
measured from /proc/PID/schedstat around each request, and the time both spent runnable but
waiting for a CPU ("wait", other work on the machine). The machine's load average and the
CPU share of other processes over the timed part come with every figure.

Goal (issue #17): p95 page time at most 300 ms on PostgreSQL at a million rows, for every URL;
the summary gives the p95 over all of them too, and names each URL over the goal. Exit status 1
when a page answered anything but 200 or the goal was missed.

`--database-url` and `--project ID` time an existing project again without building it (the
bench leaves its project behind on a database it did not start).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import json
import os
import random
import re
import signal
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlencode, urlsplit

import annotation_load as load  # bench/, this script's folder

REPO = load.REPO
WORKDIR = REPO / "var" / "tmp" / "records-browser"
GOAL_P95_MS = 300.0
ANNOTATORS = 36
OVERLAP = 3
VOCABULARY_SIZE = 20_000
SENTENCE_POOL = 100_000
SHARES = {"preference": 0.75, "comparisons": 0.20, "sft": 0.05}
TEST_SPLIT_SHARE = 0.10
HUMAN_SHARE = 0.6  # of the unlabelled pairs, judged by people before the run
SIMULATED_SHARE = 0.1  # of those judgements
GOLD_SHARE = 0.01  # of the imported pairs
ABSENT_WORD = "zugzwangs"  # never generated: the generated words are consonant-vowel syllables


@dataclass(frozen=True)
class Config:
    database_url: str
    rows: int
    repeats: int
    warmup: int
    seed: int
    project: int | None
    queries: bool
    # What annotation_load.app_env and start_gunicorn read.
    workers: int = 1
    worker_class: str = "sync"
    threads: int = 1
    keep_alive: int = 5
    server_label: str = "1 sync worker"


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
    parser.add_argument("--rows", type=int, default=1_000_000, help="records (items) to build")
    parser.add_argument("--repeats", type=int, default=20, help="timed requests per URL")
    parser.add_argument("--warmup", type=int, default=2, help="untimed requests per URL first")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--project", type=int, help="time this project, built by an earlier run")
    parser.add_argument(
        "--queries",
        action="store_true",
        help="also list each page's SQL with its time (in-process, through Django's test Client)",
    )
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database: run under config/devservices.py test, or pass --database-url")
    if urlsplit(args.database_url).scheme not in load.POSTGRES_SCHEMES:
        parser.error(f"refusing {urlsplit(args.database_url).scheme or 'that'}: needs PostgreSQL")
    if args.rows < 1000:
        parser.error("--rows must be at least 1000")
    return Config(
        database_url=args.database_url,
        rows=args.rows,
        repeats=args.repeats,
        warmup=args.warmup,
        seed=args.seed,
        project=args.project,
        queries=args.queries,
    )


log = load.log


# --- The generated text ----------------------------------------------------------------------

SYLLABLES = [c + v for c in "bdfgklmnprstv" for v in "aeiou"]


@dataclass
class Text:
    """A pool of sentences over a Zipf vocabulary; rows are made of a few of them."""

    sentences: list[str]
    words: list[str]  # by frequency, commonest first

    @classmethod
    def make(cls, rng: random.Random) -> Text:
        words, seen = list(load.WORDS), set(load.WORDS)
        while len(words) < VOCABULARY_SIZE:
            word = "".join(rng.choices(SYLLABLES, k=rng.randint(2, 4)))
            if word not in seen:
                seen.add(word)
                words.append(word)
        weights = list(itertools.accumulate(1 / rank for rank in range(1, len(words) + 1)))
        sentences = []
        for _ in range(SENTENCE_POOL):
            chosen = rng.choices(words, cum_weights=weights, k=rng.randint(6, 14))
            if rng.random() < 0.1:
                chosen[rng.randrange(len(chosen))] = f"`{rng.choice(words[:200])}()`"
            sentences.append(" ".join(chosen).capitalize() + ".")
        return cls(sentences, words)

    def paragraph(self, rng: random.Random, low: int, high: int) -> str:
        return " ".join(rng.choices(self.sentences, k=rng.randint(low, high)))

    def share_of_sentences(self) -> tuple[Counter, Counter]:
        """How many pool sentences hold each word, and each pair of adjacent words."""
        words, pairs = Counter(), Counter()
        for sentence in self.sentences:
            tokens = re.findall(r"[a-z]+", sentence.lower())
            words.update(set(tokens))
            pairs.update(set(itertools.pairwise(tokens)))
        return words, pairs


def generate(cfg: Config, text: Text, rng: random.Random, path: Path) -> Counter:
    """The import file: preference, comparison and SFT rows in a fixed random order."""
    shapes = list(SHARES)
    cum = list(itertools.accumulate(SHARES.values()))
    made: Counter = Counter()
    with path.open("w", encoding="utf-8", buffering=1 << 20) as out:
        for index in range(cfg.rows):
            shape = shapes[min(bisect.bisect(cum, rng.random()), len(shapes) - 1)]
            row: dict = {"prompt": f"Question {index}: " + text.paragraph(rng, 1, 3)}
            if rng.random() < TEST_SPLIT_SHARE:
                row["split"] = "test"
            if shape == "preference":
                row["chosen"] = text.paragraph(rng, 2, 5)
                row["rejected"] = text.paragraph(rng, 1, 4)
            elif shape == "comparisons":
                row["completions"] = [
                    {"text": text.paragraph(rng, 2, 5), "model": f"model-{side}"} for side in "ab"
                ]
            else:
                row["completion"] = text.paragraph(rng, 2, 5)
            made[shape] += 1
            out.write(json.dumps(row) + "\n")
    return made


# --- The project (untimed) -------------------------------------------------------------------


@dataclass
class Project:
    pk: int
    admin_id: int
    annotators: list[str]  # usernames, busiest first
    facts: dict = field(default_factory=dict)


def prepare_database(cfg: Config) -> None:
    load.prepare_database(cfg)  # migrate + collectstatic with the app's settings, then Django


def build(cfg: Config) -> Project:
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from core.roles import Role
    from feedback import services
    from feedback.models import TaskKind
    from feedback.services import ImportOptions, import_file

    rng = random.Random(cfg.seed)
    tag = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
    WORKDIR.mkdir(parents=True, exist_ok=True)
    path = WORKDIR / f"records-{tag}.jsonl"
    started = time.perf_counter()
    text = Text.make(rng)
    made = generate(cfg, text, rng, path)
    log(f"generated {cfg.rows:,} rows ({dict(made)}) in {time.perf_counter() - started:.1f} s")

    User = get_user_model()
    admin = User.objects.create_superuser(username=f"records-admin-{tag}", password=None)
    project = services.project_create(
        name=f"Records bench {tag}",
        description="Created by bench/records_browser.py",
        task_kinds=[TaskKind.PAIRWISE, TaskKind.DEMONSTRATION],
        overlap=OVERLAP,
    )
    started = time.perf_counter()
    report = import_file(project=project, path=path, options=ImportOptions(source="bench.jsonl"))
    path.unlink()
    if not report.ok:
        sys.exit(f"the import failed: {report.errors[:3]}")
    log(f"imported in {time.perf_counter() - started:.1f} s: {report.created}")
    # What a worker does once an import commits (feedback.services.search): the pages are
    # measured on indexed records, as they are a minute or two after an import.
    started = time.perf_counter()
    indexed = services.search_index_pending()
    log(f"search vectors of {indexed:,} texts in {time.perf_counter() - started:.1f} s")

    for role in Role:
        Group.objects.get_or_create(name=role.value)
    group = Group.objects.get(name=Role.ANNOTATOR)
    annotators = User.objects.bulk_create(
        [User(username=f"records-{tag}-annotator-{n:02d}") for n in range(ANNOTATORS)]
    )
    User.groups.through.objects.bulk_create(
        [User.groups.through(user_id=u.pk, group_id=group.pk) for u in annotators]
    )
    started = time.perf_counter()
    judged = judge_by_people(project, annotators, rng)
    gold = mark_gold(project, rng)
    seconds = time.perf_counter() - started
    log(f"{judged:,} human judgements, {gold:,} gold items in {seconds:.1f} s")
    started = time.perf_counter()
    vacuum_analyze()
    log(f"VACUUM ANALYZE in {time.perf_counter() - started:.1f} s")
    return Project(project.pk, admin.pk, [u.username for u in annotators])


def judge_by_people(project, annotators: list, rng: random.Random) -> int:
    """Three in five of the unlabelled pairs, judged OVERLAP times each as the services leave
    it. Annotator n gets a share of the work proportional to 1/(n+1)^0.7: tenfold apart."""
    from django.db import transaction
    from django.db.models import F
    from django.utils import timezone

    from feedback.models import (
        Assignment,
        AssignmentStatus,
        Item,
        Origin,
        PairwiseJudgement,
        TaskKind,
    )

    open_pairs = list(
        Item.objects.filter(project=project, kind=TaskKind.PAIRWISE, submitted_count=0)
        .order_by("pk")
        .values_list("pk", flat=True)
    )
    chosen = [pk for pk in open_pairs if rng.random() < HUMAN_SHARE]
    weights = list(itertools.accumulate(1 / (n + 1) ** 0.7 for n in range(len(annotators))))
    now = timezone.now()
    written = 0
    for start in range(0, len(chosen), 5000):
        batch = chosen[start : start + 5000]
        slots = []
        for item_id in batch:
            who: set[int] = set()
            while len(who) < OVERLAP:
                who.add(bisect.bisect(weights, rng.random() * weights[-1]))
            slots += [
                Assignment(
                    item_id=item_id,
                    annotator=annotators[n],
                    status=AssignmentStatus.SUBMITTED,
                    leased_at=now,
                    expires_at=now,
                    finished_at=now,
                )
                for n in sorted(who)
            ]
        with transaction.atomic():
            Assignment.objects.bulk_create(slots, batch_size=2000)
            PairwiseJudgement.objects.bulk_create(
                [
                    PairwiseJudgement(
                        assignment=slot,
                        item_id=slot.item_id,
                        annotator=slot.annotator,
                        origin=Origin.SIMULATED if rng.random() < SIMULATED_SHARE else Origin.HUMAN,
                        choice=rng.choice("ab"),
                        strength=rng.choice(["slight", "clear"]),
                        shown_left=rng.choice("ab"),
                        seconds_spent=rng.uniform(5, 90),
                    )
                    for slot in slots
                ],
                batch_size=2000,
            )
            Item.objects.filter(pk__in=batch).update(submitted_count=F("submitted_count") + OVERLAP)
        written += len(slots)
    return written


def mark_gold(project, rng: random.Random) -> int:
    from feedback.models import Item, PairwiseJudgement

    imported = PairwiseJudgement.objects.filter(item__project=project, origin="imported")
    ids = [pk for pk in imported.values_list("item_id", flat=True) if rng.random() < GOLD_SHARE]
    for start in range(0, len(ids), 10_000):
        Item.objects.filter(pk__in=ids[start : start + 10_000]).update(
            is_gold=True, gold_answer={"choice": "a"}
        )
    return len(ids)


def vacuum_analyze() -> None:
    from django.apps import apps
    from django.db import connection

    tables = [model._meta.db_table for model in apps.get_app_config("feedback").get_models()]
    tables += ["auth_user"]
    with connection.cursor() as cursor:
        for table in tables:
            cursor.execute(f'VACUUM (ANALYZE) "{table}"')


def existing(cfg: Config) -> Project:
    from django.contrib.auth import get_user_model
    from django.db.models import Count

    from feedback.models import Assignment

    User = get_user_model()
    admin = User.objects.filter(is_superuser=True, username__startswith="records-admin-").latest(
        "pk"
    )
    busiest = (
        Assignment.objects.filter(item__project_id=cfg.project, annotator__groups__name="annotator")
        .values("annotator__username")
        .annotate(n=Count("pk"))
        .order_by("-n")
    )
    return Project(cfg.project, admin.pk, [row["annotator__username"] for row in busiest])


# --- The pages -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Page:
    name: str
    path: str
    htmx: bool = False


def pages(project: Project, seed: int) -> list[Page]:
    """The URLs an admin opens: search words of every frequency, each filter, some together,
    first pages and the pages their Next links lead to."""
    from django.http import QueryDict

    from feedback.models import Item, PairwiseJudgement
    from feedback.models import Project as ProjectRow
    from feedback.selectors.records import PAGE_SIZE, RecordFilters, records_page

    text = Text.make(random.Random(seed))  # the sentences the build drew from
    words, pairs = text.share_of_sentences()
    by_share = sorted(((n, w) for w, n in words.items() if len(w) > 3), reverse=True)
    common, second = by_share[0][1], by_share[1][1]
    middling = next(w for n, w in by_share if n <= SENTENCE_POOL // 100)
    rare = next(w for n, w in by_share if n <= 3)
    phrase = next(
        " ".join(pair)
        for pair, n in sorted(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        if n <= SENTENCE_POOL // 1000 and pair[0] != pair[1] and all(len(w) > 3 for w in pair)
    )
    items = Item.objects.filter(project_id=project.pk)
    count = items.count()
    judged = PairwiseJudgement.objects.filter(item__project_id=project.pk, origin="human")
    human_item = judged.order_by("item_id").values_list("item_id", flat=True)[judged.count() // 2]
    ids = items.order_by("pk").values_list("pk", flat=True)
    imported_item = (
        items.filter(import_key__gt="").order_by("pk").values_list("pk", flat=True)[count // 3]
    )
    middle, oldest = ids[count // 2], ids[min(PAGE_SIZE, count - 1)]
    busiest, quietest = project.annotators[0], project.annotators[-1]
    base = f"/projects/{project.pk}/records/"

    def url(**query: str) -> str:
        return base + (f"?{urlencode(query)}" if query else "")

    def next_page(**query: str) -> str:
        """The URL of the page's Next link, as the browser would show it."""
        page = records_page(
            project=project_row, filters=RecordFilters.from_query(QueryDict(urlencode(query)))
        )
        return url(**query, **{k: str(v) for k, v in (page.older or {"page": 2}).items()})

    project_row = ProjectRow.objects.get(pk=project.pk)
    listed = [
        Page("all, page 1", url()),
        Page("all, page 2 (htmx)", next_page(), htmx=True),
        Page("all, a deep page", url(before=str(middle))),
        Page("all, the oldest page", url(before=str(oldest))),
        Page("all, page 40 by number", url(page="40")),
        Page(f"common word ({common})", url(q=common)),
        Page(f"second common word ({second})", url(q=second)),
        Page(f"middling word ({middling})", url(q=middling)),
        Page(f"rare word ({rare})", url(q=rare)),
        Page("a word found nowhere", url(q=ABSENT_WORD)),
        Page(f'phrase ("{phrase}")', url(q=f'"{phrase}"')),
        Page(f"two words ({middling} {rare})", url(q=f"{middling} {rare}")),
        Page(f"-word ({middling} -{common})", url(q=f"{middling} -{common}")),
        Page(f"or ({rare} or {ABSENT_WORD})", url(q=f"{rare} or {ABSENT_WORD}")),
        Page("common word, page 2 (htmx)", next_page(q=common), htmx=True),
        Page("common word, a deep page", url(q=common, before=str(middle))),
        Page("middling word, page 2", next_page(q=middling)),
        Page("split=test", url(split="test")),
        Page("kind=demonstration", url(kind="demonstration")),
        Page("kind=ranking (none)", url(kind="ranking")),
        Page("origin=human", url(origin="human")),
        Page("origin=imported", url(origin="imported")),
        Page("origin=simulated", url(origin="simulated")),
        Page("status=complete", url(status="complete")),
        Page("status=open", url(status="open")),
        Page("annotator (busiest)", url(annotator=busiest)),
        Page("annotator (least busy)", url(annotator=quietest)),
        Page("gold=yes", url(gold="yes")),
        Page("split=test + status=open", url(split="test", status="open")),
        Page("origin=human + split=test + gold=no", url(origin="human", split="test", gold="no")),
        Page(
            "annotator + origin=simulated (htmx)",
            url(annotator=busiest, origin="simulated"),
            htmx=True,
        ),
        Page(f"common word + split=test ({common})", url(q=common, split="test")),
        Page(f"rare word + kind=pairwise ({rare})", url(q=rare, kind="pairwise")),
        Page(f"middling word + origin=human ({middling})", url(q=middling, origin="human")),
        Page(
            "gold=yes + split=test + kind=pairwise",
            url(gold="yes", split="test", kind="pairwise"),
        ),
        Page("record: human-judged pair", f"/records/{human_item}/?q={common}"),
        Page("record: imported pair", f"/records/{imported_item}/"),
    ]
    random.Random(seed).shuffle(listed)  # a fixed order, interleaving the kinds of page
    return listed


COUNT_SHOWN = re.compile(r'<p class="muted">\s*([^<]*?record[^<]*?)\s*</p>')


@dataclass
class Sample:
    seconds: float
    app_cpu: float  # the gunicorn worker's CPU seconds during the request
    db_cpu: float  # its PostgreSQL backend's
    waited: float  # both processes' seconds runnable but not running


@dataclass
class Results:
    samples: dict[str, list[Sample]] = field(default_factory=lambda: defaultdict(list))
    shown: dict[str, str] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def schedstat(pid: int | None) -> tuple[float, float]:
    """(seconds on a CPU, seconds runnable and waiting for one) of a process so far."""
    if pid is None:
        return 0.0, 0.0
    try:
        run, wait, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0.0, 0.0
    return int(run) / 1e9, int(wait) / 1e9


def worker_pid(master: int) -> int | None:
    for entry in os.scandir("/proc"):
        stat = load._proc_stat(int(entry.name)) if entry.name.isdigit() else None
        if stat and stat[0] == master:
            return int(entry.name)
    return None


def backend_pid() -> int | None:
    """The PostgreSQL backend serving the gunicorn worker: the only other connection once the
    main thread's is closed. Run in a thread of its own (the event loop's may not query)."""
    from django.db import connection

    try:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT pid FROM pg_stat_activity WHERE backend_type = 'client backend' "
                "AND datname = current_database() AND pid <> pg_backend_pid()"
            )
            rows = cursor.fetchall()
    finally:
        connection.close()
    return rows[0][0] if len(rows) == 1 else None


def session_cookies(user_id: int) -> dict[str, str]:
    """A logged-in session, as Client.force_login makes it (no password hashing)."""
    from django.contrib.auth import get_user_model
    from django.test import Client

    client = Client()
    client.force_login(get_user_model().objects.get(pk=user_id))
    return {name: morsel.value for name, morsel in client.cookies.items()}


class Browser:
    """One admin's browser: session cookies, one keep-alive connection, one page at a time."""

    def __init__(self, port: int, cookies: dict[str, str]) -> None:
        self.conn = load.Connection(port)
        self.port = port
        self.cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())

    async def get(self, page: Page) -> load.Response:
        lines = [
            f"GET {page.path} HTTP/1.1",
            f"Host: {load.HOST}:{self.port}",
            "User-Agent: records-browser-bench",
            "Accept: text/html",
            f"Cookie: {self.cookie}",
        ]
        if page.htmx:
            lines += ["HX-Request: true", "HX-Target: results"]
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        return await self.conn.request(head, b"")


async def browse(
    cfg: Config, page_list: list[Page], port: int, cookies: dict, worker: int | None
) -> Results:
    results = Results()
    browser = Browser(port, cookies)
    for _ in range(cfg.warmup):
        for page in page_list:
            response = await browser.get(page)
            if response.status != 200:
                results.errors.append(f"{page.name}: {page.path} -> {response.status}")
            elif found := COUNT_SHOWN.search(response.body.decode(errors="replace")):
                results.shown[page.name] = " ".join(found.group(1).split())
    backend = await asyncio.to_thread(backend_pid)
    for _ in range(cfg.repeats):
        for page in page_list:
            app0, app_wait0 = schedstat(worker)
            db0, db_wait0 = schedstat(backend)
            started = time.perf_counter()
            response = await browser.get(page)
            seconds = time.perf_counter() - started
            app1, app_wait1 = schedstat(worker)
            db1, db_wait1 = schedstat(backend)
            if response.status != 200:
                results.errors.append(f"{page.name}: {page.path} -> {response.status}")
                continue
            waited = (app_wait1 - app_wait0) + (db_wait1 - db_wait0)
            results.samples[page.name].append(Sample(seconds, app1 - app0, db1 - db0, waited))
    browser.conn.close()
    if await asyncio.to_thread(backend_pid) != backend:
        results.errors.append("the worker's database connection changed during the run")
    return results


# --- Queries per page (--queries) ------------------------------------------------------------


def query_report(project: Project, page_list: list[Page]) -> list[str]:
    """Each page once more in this process, with the time of every SQL statement it ran."""
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.test import Client

    client = Client(HTTP_HOST=load.HOST)
    client.force_login(get_user_model().objects.get(pk=project.admin_id))
    lines = []
    for page in page_list:
        ran: list[tuple[float, str]] = []

        def timed(execute, sql, params, many, context, ran=ran):
            started = time.perf_counter()
            try:
                return execute(sql, params, many, context)
            finally:
                ran.append((time.perf_counter() - started, sql))

        headers = {"HX-Request": "true"} if page.htmx else {}
        started = time.perf_counter()
        with connection.execute_wrapper(timed):
            client.get(page.path, headers=headers)
        total = time.perf_counter() - started
        in_sql = sum(seconds for seconds, _ in ran)
        lines.append(
            f"{page.name}: {1000 * total:.0f} ms, {len(ran)} queries, {1000 * in_sql:.0f} ms in SQL"
        )
        for seconds, sql in sorted(ran, reverse=True)[:3]:
            if seconds >= 0.005:
                lines.append(f"    {1000 * seconds:7.1f} ms  {sql[:300]}")
    return lines


# --- Report ----------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.0f}"


def report(
    cfg: Config, project: Project, page_list: list[Page], results: Results, machine: dict
) -> int:
    from feedback.models import Item

    rows = Item.objects.filter(project_id=project.pk).count()
    loads = ", ".join(f"{x:.1f}" for x in machine["load_before"])
    loads_after = ", ".join(f"{x:.1f}" for x in machine["load_after"])
    print(
        f"\nbench/records_browser.py: {rows:,} records in one project; {os.cpu_count()} CPUs "
        f"({load.cpu_model()}), {machine['postgres']}; gunicorn {load.gunicorn_version()}, "
        f"{cfg.server_label}, DEBUG=0; {cfg.repeats} timed requests per URL after "
        f"{cfg.warmup} untimed; load average {loads} before, {loads_after} after"
    )
    print("  " + machine["cpu"])
    width = max(len(page.name) for page in page_list)
    header = (
        f"  {'page':<{width}} {'p50 ms':>7} {'p95 ms':>7} {'max ms':>7} {'app ms':>7} "
        f"{'db ms':>6} {'wait ms':>7}  shown"
    )
    print(header)
    print("  " + "-" * (len(header) - 2))
    everything, over = [], []
    for page in sorted(page_list, key=lambda p: p.name):
        samples = results.samples.get(page.name, [])
        if not samples:
            print(f"  {page.name:<{width}} (no answer)")
            continue
        times = sorted(s.seconds for s in samples)
        everything += times
        p95 = load.percentile(times, 95)
        if 1000 * p95 > GOAL_P95_MS:
            over.append(f"{page.name} {ms(p95)} ms")
        n = len(samples)
        print(
            f"  {page.name:<{width}} {ms(load.percentile(times, 50)):>7} {ms(p95):>7} "
            f"{ms(times[-1]):>7} {ms(sum(s.app_cpu for s in samples) / n):>7} "
            f"{ms(sum(s.db_cpu for s in samples) / n):>6} "
            f"{ms(sum(s.waited for s in samples) / n):>7}  {results.shown.get(page.name, '')}"
        )
    for error in results.errors[:5]:
        print(f"  error: {error}")
    if not everything:
        print("\nSUMMARY: no page answered 200")
        return 1
    everything.sort()
    p50, p95 = load.percentile(everything, 50), load.percentile(everything, 95)
    db_share = sum(s.db_cpu for ss in results.samples.values() for s in ss) / sum(everything)
    met = 1000 * p95 <= GOAL_P95_MS and not over
    print(
        f"\nSUMMARY: records browser, {rows:,} records, {len(page_list)} URLs x {cfg.repeats}: "
        f"p50 {ms(p50)} ms, p95 {ms(p95)} ms, max {ms(everything[-1])} ms; PostgreSQL CPU "
        f"{100 * db_share:.0f}% of the page time; errors {len(results.errors)}; goal p95 <= "
        f"{GOAL_P95_MS:.0f} ms: {'met' if met else 'MISSED'}"
        + (f" (over it: {'; '.join(over)})" if over else "")
        + f" [{os.cpu_count()} cores, load {loads} -> {loads_after}]"
    )
    return 0 if met and not results.errors else 1


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # so gunicorn is stopped
    log("migrate + collectstatic")
    prepare_database(cfg)
    project = existing(cfg) if cfg.project else build(cfg)
    page_list = pages(project, cfg.seed)
    facts, postmaster = load.postgres_facts()
    cache_server = load.redis_pid()
    cookies = session_cookies(project.admin_id)
    from django.db import connection

    connection.close()  # so that the worker's is the only connection during the run
    log(f"project {project.pk}: {len(page_list)} URLs; starting gunicorn ({cfg.server_label})")
    server = load.start_gunicorn(cfg)
    try:
        worker = worker_pid(server.proc.pid)
        machine = {"postgres": facts, "load_before": os.getloadavg()}
        before = load.CpuSample.take(server.proc.pid, postmaster, cache_server)
        results = asyncio.run(browse(cfg, page_list, server.port, cookies, worker))
        after = load.CpuSample.take(server.proc.pid, postmaster, cache_server)
        machine.update(load_after=os.getloadavg(), cpu=load.cpu_report(before, after))
    finally:
        server.stop()
    status = report(cfg, project, page_list, results, machine)
    if cfg.queries:
        print("\nqueries per page (in-process, one request each):")
        print("\n".join("  " + line for line in query_report(project, page_list)))
    connection.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
