"""Label Studio under the load shape of bench/annotation_load.py's token API flow, for comparison.

The same shape as `annotation_load.py --flow api --overlap 1 --tasks 2000 --items 10000
--warmup 500`: one load generator, 32 annotators in a closed loop, each on one keep-alive
connection with a bearer token doing "next task" + "pairwise submit", 2,000 timed judgements
after an untimed warm-up of 500 and an ANALYZE, a 10,000-item project where each item is
labelled once, replies of about 600 characters of markdown (the same generator and seed). The
client, the annotator loop and the CPU accounting are annotation_load.py's, imported.

Label Studio runs from its own virtual environment (--ls-venv, default var/peers/ls-venv),
made once with

    python3.11 -m venv var/peers/ls-venv
    var/peers/ls-venv/bin/pip install 'label-studio[uwsgi]==1.23.2' 'sentry-sdk<3'

(`[uwsgi]` is pyuwsgi; 1.23.2 accepts sentry-sdk 3, which refuses its send_default_pii option
and stops it from starting), on PostgreSQL, behind uwsgi configured by the text of its
Docker image's deploy/uwsgi.ini (below, verbatim except for paths and ports), DEBUG off, its
default settings otherwise:

    .venv/bin/python config/devservices.py test -- .venv/bin/python bench/peer_label_studio.py

Setup (untimed): a database of its own in that PostgreSQL server, `manage.py migrate`, an owner
and one user per annotator in one organization (as `label-studio init` makes them), a personal
access token (JWT refresh token) each, then uwsgi, the project over the API (a `<Pairwise>`
labelling config, maximum_annotations 1, sequential sampling: the defaults) and the tasks
through its import API. Each annotator exchanges its token for an access token at
/api/token/refresh/ as the label-studio-sdk does, and again whenever it is about to expire.

The loop: `GET /api/projects/<id>/next/` (Label Studio locks the task for the annotator), then
`POST /api/tasks/<task>/annotations/` with a pairwise result, then next again. Afterwards the
database is checked: the annotation count against the client's and tasks annotated more than
once. Exit status 1 on any failed request or check.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import dataclasses
import json
import os
import platform
import random
import resource
import signal
import socket
import string
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parent))

import annotation_load as load  # bench/ is not a package: imported from its folder

LOG_DIR = load.REPO / "var" / "tmp" / "peer-label-studio"
DEFAULT_LS_VENV = load.REPO / "var" / "peers" / "ls-venv"
HOST = load.HOST
IMPORT_CHUNK = 500  # tasks per import request
TOKEN_MARGIN = 30.0  # refresh an access token this many seconds before it expires

# Label Studio's deploy/uwsgi.ini (the file its Docker image runs with `label-studio-uwsgi`),
# verbatim. Only the lines in UWSGI_SUBSTITUTIONS are changed: paths and ports of this machine.
LS_UWSGI_INI = r"""[uwsgi]
chdir = /label-studio/label_studio
http = 0.0.0.0:8080
module = core.wsgi:application
master = true
cheaper = true
single-interpreter = true

if-env = UWSGI_PROCESSES
processes = $(UWSGI_PROCESSES)
endif =
if-not-env = UWSGI_PROCESSES
processes = %(%k * 2)
endif =

if-env = UWSGI_NUMBER_OF_THREADS
threads = $(UWSGI_NUMBER_OF_THREADS)
endif =
if-not-env = UWSGI_NUMBER_OF_THREADS
threads = 1
endif =

vacuum = true
die-on-term = true
pidfile = /tmp/%n.pid
buffer-size = 65535
http-timeout = 300
stats = :1717
stats-http = true
memory-report = true
# Proc naming
auto-procname = true
procname-prefix = ls-
need-app = true

env = APP_WEBSERVER=uwsgi

# Avoid errors on aborted client connections
ignore-sigpipe = true
ignore-write-errors = true
disable-write-exception = true

# Limits, Kill requests after 120 seconds
harakiri = 120
harakiri-verbose = true
post-buffering = 4096

# Configure uwsgi output
logger = applogger stdio
log-route = applogger {
log-encoder = format:applogger ${msg}
logger = default stdio
log-route = default ^((?!\{).)*$
log-encoder = json:default {"timestamp": "${strftime:%%d/%%b/%%Y:%%H:%%M:%%S %%z}", "source": "uwsgi", "levelname": "INFO", "message": "${msg}"}
log-encoder = nl
# Disable request logging
disable-logging = True
log-5xx = true

# https://docs.launchdarkly.com/sdk/server-side/python#configuring-uwsgi
enable-threads = True

# uwsgi recommends this to prevent thundering herd on accept.
thunder-lock = True

# https://ddtrace.readthedocs.io/en/stable/advanced_usage.html#uwsgi
# This ensures that file descriptors aren't shared between keystone processes.
lazy-apps = True

# Worker Recycling <!>
# This configuration will restart a worker process after any of the following events:
#     5000 requests have been handled
#     The worker has allocated 2 GB of memory
max-requests = 5000
reload-on-rss = 2048
worker-reload-mercy = 300

#     1 hour has passed
; Remove these options because of https://github.com/unbit/uwsgi/issues/1760
;max-worker-lifetime = 3600
;max-worker-lifetime-delta = 120
"""  # noqa: E501 (verbatim)

# One task per item: the prompt and the two replies side by side, compared with <Pairwise>
# (https://labelstud.io/tags/pairwise). Its result is {"selected": "left" | "right"}.
LABEL_CONFIG = """<View>
  <Header value="Which reply is better?"/>
  <Text name="prompt" value="$prompt"/>
  <Pairwise name="pw" toName="a,b"/>
  <Text name="a" value="$a"/>
  <Text name="b" value="$b"/>
</View>"""


# --- Configuration --------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    database_url: str
    ls_venv: Path
    annotators: int
    tasks: int
    warmup: int
    items: int
    seed: int
    processes: int | None  # None: what deploy/uwsgi.ini picks (UWSGI_PROCESSES unset)
    threads: int | None  # None: likewise (UWSGI_NUMBER_OF_THREADS unset)

    def load_config(self) -> load.Config:
        """annotation_load's Config for its closed loop and its Annotator (api flow, k=1)."""
        return load.Config(
            database_url=self.database_url,
            annotators=self.annotators,
            tasks=self.tasks,
            overlap=1,
            flow="api",
            rate=None,
            duration=0.0,
            arrivals="poisson",
            workers=0,
            worker_class="sync",
            threads=1,
            keep_alive=0,
            login="auto",
            seed=self.seed,
            min_items=self.items,
            warmup=self.warmup,
        )


def parse_args(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    default_url = os.environ.get("TEST_DATABASE_URL") or os.environ.get("DATABASE_URL", "")
    parser.add_argument(
        "--database-url",
        default=default_url,
        help="PostgreSQL server to use, as a superuser: the bench creates a database of its own "
        "in it (default: $TEST_DATABASE_URL, else $DATABASE_URL)",
    )
    parser.add_argument(
        "--ls-venv",
        type=Path,
        default=DEFAULT_LS_VENV,
        help=f"virtual environment with label-studio[uwsgi] (default {DEFAULT_LS_VENV})",
    )
    parser.add_argument("--annotators", type=int, default=32, help="simulated annotators")
    parser.add_argument("--tasks", type=int, default=2000, help="timed judgements")
    parser.add_argument(
        "--warmup", type=int, default=500, help="untimed judgements first, then ANALYZE"
    )
    parser.add_argument("--items", type=int, default=10000, help="tasks in the project")
    parser.add_argument(
        "--processes",
        type=int,
        help="UWSGI_PROCESSES for deploy/uwsgi.ini (default unset: 2 per core)",
    )
    parser.add_argument(
        "--threads",
        type=int,
        help="UWSGI_NUMBER_OF_THREADS for deploy/uwsgi.ini (default unset: 1)",
    )
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    if not args.database_url:
        parser.error("no database: run under config/devservices.py test, or pass --database-url")
    if urlsplit(args.database_url).scheme not in load.POSTGRES_SCHEMES:
        parser.error("Label Studio is measured on PostgreSQL only")
    if not (args.ls_venv / "bin" / "uwsgi").exists():
        parser.error(
            f"no uwsgi in {args.ls_venv}: make it with `python3.11 -m venv {args.ls_venv}` and "
            f"`{args.ls_venv}/bin/pip install 'label-studio[uwsgi]==1.23.2' 'sentry-sdk<3'`"
        )
    if args.items < args.tasks + args.warmup + args.annotators:
        parser.error("--items must cover --tasks + --warmup plus one task per annotator")
    return Options(
        database_url=args.database_url,
        ls_venv=args.ls_venv,
        annotators=args.annotators,
        tasks=args.tasks,
        warmup=args.warmup,
        items=args.items,
        seed=args.seed,
        processes=args.processes,
        threads=args.threads,
    )


# --- PostgreSQL -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Database:
    url: str  # the Label Studio database
    host: str
    port: int
    user: str
    password: str
    name: str

    def connect(self):
        import psycopg

        return psycopg.connect(self.url, autocommit=True)


def create_database(server_url: str, tag: str) -> Database:
    """A fresh database for Label Studio in the given server, which the bench never drops: under
    config/devservices.py the whole server is deleted afterwards."""
    import psycopg

    name = f"labelstudio_bench_{tag}".replace("-", "_")
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(server_url)
    return Database(
        url=parts._replace(path=f"/{name}").geturl(),
        host=parts.hostname or "127.0.0.1",
        port=parts.port or 5432,
        user=unquote(parts.username or "postgres"),
        password=unquote(parts.password or ""),
        name=name,
    )


def postgres_facts(db: Database) -> tuple[str, int | None]:
    """As annotation_load.postgres_facts, on a psycopg connection: facts and the postmaster."""
    with db.connect() as conn:
        values = {
            name: conn.execute(f"SHOW {name}").fetchone()[0]
            for name in ("server_version", "fsync", "synchronous_commit", "shared_buffers")
        }
        backend = conn.execute("SELECT pg_backend_pid()").fetchone()[0]
    facts = f"PostgreSQL {values.pop('server_version')}, " + ", ".join(
        f"{k}={v}" for k, v in values.items()
    )
    stat = load._proc_stat(backend)
    postmaster = stat[0] if stat and load._proc_name(stat[0]) == "postgres" else None
    return facts, postmaster


def analyze(db: Database) -> None:
    with db.connect() as conn:
        conn.execute("ANALYZE")


# --- Label Studio's environment and setup ---------------------------------------------------


def ls_python(opts: Options) -> str:
    return str(opts.ls_venv / "bin" / "python")


def ls_env(opts: Options, db: Database) -> dict[str, str]:
    """Label Studio's environment as its Docker image sets it (core.settings.label_studio,
    PostgreSQL through DJANGO_DB=default and POSTGRE_*), its data directory under var/tmp."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "DJANGO_SETTINGS_MODULE")
        and not key.startswith(("DATABASE_", "REDIS_", "DEBUG"))
    }
    env.update(
        PATH=f"{opts.ls_venv / 'bin'}:{env.get('PATH', '')}",
        VIRTUAL_ENV=str(opts.ls_venv),
        DJANGO_SETTINGS_MODULE="core.settings.label_studio",
        LABEL_STUDIO_BASE_DATA_DIR=str(LOG_DIR / "data"),
        DJANGO_DB="default",
        POSTGRE_NAME=db.name,
        POSTGRE_USER=db.user,
        POSTGRE_PASSWORD=db.password,
        POSTGRE_HOST=db.host,
        POSTGRE_PORT=str(db.port),
    )
    if opts.processes:
        env["UWSGI_PROCESSES"] = str(opts.processes)
    if opts.threads:
        env["UWSGI_NUMBER_OF_THREADS"] = str(opts.threads)
    return env


def ls_package_dir(opts: Options) -> Path:
    out = subprocess.run(
        [
            ls_python(opts),
            "-c",
            "import label_studio, os; print(os.path.dirname(label_studio.__file__))",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return Path(out.stdout.strip())


def ls_setup(opts: Options, env: dict[str, str], package: Path, tag: str) -> dict:
    """migrate, then the users and their tokens: run by Label Studio's own Python (this file's
    `--ls-setup` mode), which prints what the bench needs as JSON on its last line."""
    spec = json.dumps({"tag": tag, "annotators": opts.annotators})
    out = subprocess.run(
        [ls_python(opts), str(Path(__file__).resolve()), "--ls-setup", spec],
        cwd=package,
        env=env,
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def ls_setup_child(spec: dict) -> None:
    """In Label Studio's venv, cwd its package: migrate; an owner (superuser, as `label-studio
    init` makes it) with the organization; one plain member per annotator; a personal access
    token each (what POST /api/token/ makes)."""
    sys.path.insert(0, os.getcwd())
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)
    import label_studio
    from jwt_auth.models import LSAPIToken
    from organizations.models import Organization
    from users.models import User

    tag = spec["tag"]
    owner = User.objects.create_user(email=f"owner-{tag}@bench.invalid", password=None)
    owner.is_staff = owner.is_superuser = True
    owner.save()
    org = Organization.create_organization(created_by=owner, title="Label Studio")
    owner.active_organization = org
    owner.save(update_fields=["active_organization"])
    annotators = []
    for i in range(spec["annotators"]):
        user = User.objects.create_user(email=f"bench-{tag}-{i:04d}@bench.invalid", password=None)
        org.add_user(user)
        user.active_organization = org
        user.save(update_fields=["active_organization"])
        annotators.append(user)
    print(
        json.dumps(
            {
                "version": label_studio.__version__,
                "debug": settings.DEBUG,
                "conn_max_age": settings.DATABASES["default"].get("CONN_MAX_AGE", 0),
                "owner_token": LSAPIToken.for_user(owner).get_full_jwt(),
                "tokens": [LSAPIToken.for_user(u).get_full_jwt() for u in annotators],
                "emails": [u.email for u in annotators],
                "user_ids": [u.pk for u in annotators],
            }
        )
    )


# --- The data: annotation_load's generator, same seed -----------------------------------------


def render(messages: list[dict[str, str]]) -> str:
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def make_tasks(opts: Options) -> tuple[list[dict[str, str]], float]:
    """The prompts and replies annotation_load.create_dataset writes, in the same random order:
    every prompt first, then two replies per prompt."""
    rng = random.Random(opts.seed)
    prompts = [render(load.conversation(rng, index)) for index in range(opts.items)]
    replies = [load.markdown_reply(rng) for _ in prompts for _side in "ab"]
    tasks = [
        {"prompt": prompt, "a": replies[2 * i], "b": replies[2 * i + 1]}
        for i, prompt in enumerate(prompts)
    ]
    return tasks, sum(map(len, replies)) / len(replies)


# --- uwsgi ----------------------------------------------------------------------------------


def uwsgi_ini(package: Path, port: int, stats_port: int) -> str:
    substitutions = {
        "chdir = /label-studio/label_studio": f"chdir = {package}",
        "http = 0.0.0.0:8080": f"http = {HOST}:{port}",
        "stats = :1717": f"stats = {HOST}:{stats_port}",
        "pidfile = /tmp/%n.pid": f"pidfile = {LOG_DIR / 'uwsgi.pid'}",
    }
    lines = LS_UWSGI_INI.splitlines()
    for old, new in substitutions.items():
        assert lines.count(old) == 1, old
        lines[lines.index(old)] = new
    return "\n".join(lines) + "\n"


@dataclass
class Uwsgi:
    proc: subprocess.Popen[bytes]
    port: int
    stats_port: int
    log_path: Path

    def stop(self) -> None:
        load.Server(self.proc, self.port, self.log_path).stop()  # die-on-term: SIGTERM stops it

    def stats(self) -> dict:
        """The stats server's JSON (stats-http: it answers an HTTP GET)."""
        url = f"http://{HOST}:{self.stats_port}/"
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.loads(response.read())


def start_uwsgi(opts: Options, env: dict[str, str], package: Path) -> Uwsgi:
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    port, stats_port = load.free_port(), load.free_port()
    ini, log_path = LOG_DIR / "uwsgi.ini", LOG_DIR / "uwsgi.log"
    ini.write_text(uwsgi_ini(package, port, stats_port))
    with log_path.open("wb") as out:
        proc = subprocess.Popen(
            [str(opts.ls_venv / "bin" / "uwsgi"), "--ini", str(ini)],
            cwd=package,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            preexec_fn=load._stop_with_parent,
        )
    server = Uwsgi(proc, port, stats_port, log_path)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"uwsgi exited with {proc.returncode}; see {log_path}")
        with contextlib.suppress(OSError, urllib.error.URLError):
            status, _ = http_json(port, "GET", "/health/", None, "", timeout=5)
            if status == 200:
                return server
        time.sleep(0.5)
    server.stop()
    sys.exit(f"uwsgi did not answer /health/ in 180 s; see {log_path}")


def worker_summary(stats: dict) -> str:
    workers = stats.get("workers", [])
    threads = {len(w.get("cores", [])) for w in workers}
    states = {}
    for worker in workers:
        states[worker.get("status", "?")] = states.get(worker.get("status", "?"), 0) + 1
    state_text = ", ".join(f"{n} {s}" for s, n in sorted(states.items()))
    return (
        f"{len(workers)} worker processes x {'/'.join(map(str, sorted(threads)))} thread(s) "
        f"({state_text}), requests served {sum(w.get('requests', 0) for w in workers)}"
    )


# --- Setup over HTTP (blocking, untimed) ------------------------------------------------------


def http_json(
    port: int, method: str, path: str, payload, token: str, timeout: float = 600
) -> tuple[int, object]:
    body = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(f"http://{HOST}:{port}{path}", data=body, method=method)
    request.add_header("Accept", "application/json")
    if body is not None:
        request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()[:500].decode(errors="replace")


def access_token(port: int, refresh: str) -> str:
    status, answer = http_json(port, "POST", "/api/token/refresh/", {"refresh": refresh}, "")
    if status != 200:
        sys.exit(f"POST /api/token/refresh/ -> {status}: {answer}")
    return answer["access"]


def create_project(port: int, token: str, tag: str) -> int:
    payload = {
        "title": f"Load test {tag}",
        "description": "Created by bench/peer_label_studio.py",
        "label_config": LABEL_CONFIG,
        "maximum_annotations": 1,
    }
    status, answer = http_json(port, "POST", "/api/projects/", payload, token)
    if status != 201:
        sys.exit(f"POST /api/projects/ -> {status}: {answer}")
    return int(answer["id"])


def import_tasks(port: int, owner_refresh: str, project_id: int, tasks: list[dict]) -> None:
    token, fetched = access_token(port, owner_refresh), time.monotonic()
    for start in range(0, len(tasks), IMPORT_CHUNK):
        if time.monotonic() - fetched > 120:
            token, fetched = access_token(port, owner_refresh), time.monotonic()
        chunk = tasks[start : start + IMPORT_CHUNK]
        status, answer = http_json(port, "POST", f"/api/projects/{project_id}/import", chunk, token)
        if status != 201 or answer.get("task_count") != len(chunk):
            sys.exit(f"POST /api/projects/{project_id}/import -> {status}: {answer}")


# --- The annotator: annotation_load's, speaking Label Studio's API ---------------------------


def jwt_expiry(token: str) -> float:
    payload = token.split(".")[1]
    payload += "=" * (-len(payload) % 4)
    return float(json.loads(base64.urlsafe_b64decode(payload))["exp"])


RESULT_ID_CHARS = string.ascii_letters + string.digits + "_-"


class LabelStudioAnnotator(load.Annotator):
    """annotation_load.Annotator (its connection, request, latency and error code) with
    Label Studio's endpoints: GET next, POST annotation, and the SDK's token refresh."""

    def __init__(
        self, name: str, port: int, project_id: int, cfg: load.Config, stats: load.Stats, pat: str
    ) -> None:
        super().__init__(name, port, project_id, cfg, stats)
        self.personal_token = pat  # a JWT refresh token, exchanged for short-lived access tokens
        self.expires = 0.0
        self.next_path = f"/api/projects/{project_id}/next/"

    async def refresh_access(self) -> None:
        """POST /api/token/refresh/ as label_studio_sdk's TokensClientExt does."""
        # The refresh endpoint authenticates nobody (the refresh token is in the body); a bearer
        # token is only there because annotation_load's request asks for JSON only with one.
        self.token = self.personal_token
        response = await self.call(
            "refresh",
            "POST",
            "/api/token/refresh/",
            payload={"refresh": self.personal_token},
        )
        self.token = json.loads(response.body)["access"]
        self.expires = jwt_expiry(self.token)

    async def call(self, endpoint: str, method: str, path: str, **kwargs) -> load.Response:
        if endpoint != "refresh" and time.time() > self.expires - TOKEN_MARGIN:
            await self.refresh_access()
        return await super().call(endpoint, method, path, **kwargs)

    async def open_next(self, since: float | None = None) -> None:
        """GET next: 200 with a task (the one locked for this annotator, or a newly locked one),
        404 "There are no tasks" when none is left."""
        response = await self.call("next", "GET", self.next_path, since=since, expect=(200, 404))
        if response.status == 404:
            if b"There are no tasks" not in response.body:
                self.stats.error("next", f"404: {response.body[:200]!r}")
                raise load.RequestFailed
            self.done, self.task_path = True, None
            return
        task = json.loads(response.body)
        data = task.get("data") or {}
        if not all(data.get(key) for key in ("prompt", "a", "b")):
            self.stats.error("next", f"task {task.get('id')}: not a prompt and two replies")
            raise load.RequestFailed
        self.task_path = f"/api/tasks/{task['id']}/annotations/"

    def annotation_json(self) -> dict:
        """What the editor posts for a <Pairwise> choice: one result, and the lead time."""
        result_id = "".join(self.rng.choices(RESULT_ID_CHARS, k=10))
        return {
            "result": [
                {
                    "id": result_id,
                    "from_name": "pw",
                    "to_name": "pw",
                    "type": "pairwise",
                    "origin": "manual",
                    "value": {"selected": self.rng.choice(["left", "right"])},
                }
            ],
            "lead_time": round(self.rng.uniform(5, 90), 3),
        }

    async def submit(self, since: float | None = None) -> None:
        assert self.task_path is not None
        response = await self.call(
            "submit",
            "POST",
            self.task_path,
            payload=self.annotation_json(),
            since=since,
            expect=(201,),
        )
        if b'"id"' not in response.body:
            self.stats.error("submit", f"{self.task_path}: no annotation in the answer")
            raise load.RequestFailed
        self.stats.judgements += 1
        await self.open_next()


# --- Checks ---------------------------------------------------------------------------------


@dataclass
class Checks:
    tasks: int
    annotations: int
    cancelled: int
    multi_annotated: int  # tasks with more than one annotation (overlap is 1)
    duplicate_pairs: int  # (task, user) annotated twice
    labeled_drift: int  # tasks whose is_labeled disagrees with their annotations
    total_drift: int  # tasks whose total_annotations counter disagrees
    live_locks: int


def check_database(db: Database, project_id: int) -> Checks:
    queries = {
        "tasks": "SELECT count(*) FROM task WHERE project_id = %(p)s",
        "annotations": "SELECT count(*) FROM task_completion WHERE project_id = %(p)s",
        "cancelled": "SELECT count(*) FROM task_completion WHERE project_id = %(p)s"
        " AND was_cancelled",
        "multi_annotated": "SELECT count(*) FROM (SELECT task_id FROM task_completion"
        " WHERE project_id = %(p)s GROUP BY task_id HAVING count(*) > 1) s",
        "duplicate_pairs": "SELECT count(*) FROM (SELECT task_id, completed_by_id"
        " FROM task_completion WHERE project_id = %(p)s GROUP BY 1, 2 HAVING count(*) > 1) s",
        "labeled_drift": "SELECT count(*) FROM task t WHERE t.project_id = %(p)s AND t.is_labeled"
        " <> EXISTS (SELECT 1 FROM task_completion c WHERE c.task_id = t.id"
        " AND NOT c.was_cancelled)",
        "total_drift": "SELECT count(*) FROM task t WHERE t.project_id = %(p)s"
        " AND t.total_annotations <> (SELECT count(*) FROM task_completion c"
        " WHERE c.task_id = t.id AND NOT c.was_cancelled)",
        "live_locks": "SELECT count(*) FROM tasks_tasklock l JOIN task t ON t.id = l.task_id"
        " WHERE t.project_id = %(p)s AND l.expire_at > now()",
    }
    with db.connect() as conn:
        found = {
            name: conn.execute(sql, {"p": project_id}).fetchone()[0]
            for name, sql in queries.items()
        }
    return Checks(**found)


# --- The run --------------------------------------------------------------------------------


@dataclass
class Outcome:
    stats: load.Stats
    wall: float
    cpu_before: load.CpuSample
    cpu_after: load.CpuSample
    connects: int
    retries: int
    warmed: int
    loadavg_before: tuple[float, float, float]
    workers_before: str
    workers_after: str


async def drive(
    opts: Options,
    project_id: int,
    tokens: list[str],
    server: Uwsgi,
    db: Database,
    postmaster: int | None,
) -> Outcome | None:
    cfg = opts.load_config()
    setup_stats, stats = load.Stats(), load.Stats()
    annotators = [
        LabelStudioAnnotator(f"annotator-{i:04d}", server.port, project_id, cfg, setup_stats, t)
        for i, t in enumerate(tokens)
    ]
    gate = asyncio.Semaphore(8)

    async def refresh(annotator: LabelStudioAnnotator) -> None:
        async with gate:
            with contextlib.suppress(load.RequestFailed):
                await annotator.refresh_access()

    await asyncio.gather(*(refresh(a) for a in annotators))
    load.log(f"{len(annotators)} annotators hold an access token")
    warmed = 0
    if opts.warmup:
        await load.closed_loop(dataclasses.replace(cfg, tasks=opts.warmup), annotators)
        warmed = setup_stats.judgements
        await asyncio.to_thread(analyze, db)
        load.log(f"warm-up: {warmed} judgements, then ANALYZE")
    if setup_stats.errors:
        print("setup errors:\n" + setup_stats.error_text())
        return None
    # Fresh access tokens (5 minutes) so that a refresh falls in the timed phase only if it
    # runs that long, as it would for an SDK client.
    await asyncio.gather(*(refresh(a) for a in annotators))
    if setup_stats.errors:
        print("setup errors:\n" + setup_stats.error_text())
        return None
    for annotator in annotators:
        annotator.stats = stats
        annotator.conn.connects = annotator.conn.retries = 0
    workers_before = worker_summary(server.stats())
    loadavg = os.getloadavg()
    before = load.CpuSample.take(server.proc.pid, postmaster, None)
    load.log(f"closed loop: {opts.annotators} annotators, {opts.tasks} judgements")
    wall = await load.closed_loop(cfg, annotators)
    after = load.CpuSample.take(server.proc.pid, postmaster, None)
    for annotator in annotators:
        annotator.conn.close()
    return Outcome(
        stats=stats,
        wall=wall,
        cpu_before=before,
        cpu_after=after,
        connects=sum(a.conn.connects for a in annotators),
        retries=sum(a.conn.retries for a in annotators),
        warmed=warmed,
        loadavg_before=loadavg,
        workers_before=workers_before,
        workers_after=worker_summary(server.stats()),
    )


def as_uwsgi(text: str) -> str:
    """annotation_load's CPU lines name the server gunicorn; here it is uwsgi, and no Redis."""
    return text.replace("gunicorn", "uwsgi").replace("redis n/a, ", "").replace(", redis n/a", "")


@dataclass
class Facts:
    version: str
    debug: bool
    conn_max_age: int
    postgres: str
    reply_chars: float
    loadavg_start: tuple[float, float, float]
    setup_seconds: float


def server_label(opts: Options) -> str:
    processes = (
        f"UWSGI_PROCESSES={opts.processes}" if opts.processes else "processes = %k * 2 (unset env)"
    )
    threads = (
        f"UWSGI_NUMBER_OF_THREADS={opts.threads}" if opts.threads else "threads = 1 (unset env)"
    )
    return f"{processes}, {threads}"


def report(opts: Options, facts: Facts, outcome: Outcome, found: Checks) -> int:
    stats, wall = outcome.stats, outcome.wall
    table, latency = load.latency_table(stats, ("next", "submit", "refresh"))
    errors = sum(stats.errors.values())
    rate = stats.judgements / wall if wall else 0.0
    cores = os.cpu_count()
    expected = outcome.warmed + stats.judgements
    count_ok = found.annotations == expected
    one_each = found.multi_annotated == 0 and found.duplicate_pairs == 0
    la0, la1 = facts.loadavg_start, outcome.loadavg_before

    print(f"\npeer_label_studio: closed loop, Label Studio API, {opts.annotators} annotators, k=1")
    print(
        f"  machine: {cores} CPUs ({load.cpu_model()}), Python {platform.python_version()} "
        f"(client), {facts.postgres}"
    )
    print(
        f"  server: Label Studio {facts.version}, uwsgi (pyuwsgi) with deploy/uwsgi.ini: "
        f"{server_label(opts)}; DEBUG={facts.debug}, CONN_MAX_AGE={facts.conn_max_age}"
    )
    print(f"  uwsgi before the timed phase: {outcome.workers_before}")
    print(f"  uwsgi after it: {outcome.workers_after}")
    print(
        f"  data: {opts.items} tasks (prompt + two replies, <Pairwise>), replies "
        f"{facts.reply_chars:.0f} chars on average; setup {facts.setup_seconds:.0f} s"
    )
    print(f"  warm-up: {outcome.warmed} judgements, then ANALYZE, before the timed phase")
    print(
        f"  load average at start {la0[0]:.2f} {la0[1]:.2f} {la0[2]:.2f}; "
        f"before the timed phase {la1[0]:.2f} {la1[1]:.2f} {la1[2]:.2f}"
    )
    print()
    print(f"  judgements: {stats.judgements} in {wall:.2f} s = {rate:.1f} judgements/s")
    print("\n".join(table))
    print(
        f"  new connections during the run: {outcome.connects}; "
        f"stale keep-alive retries: {outcome.retries}"
    )
    print(f"  errors: {errors}" + (f"; first ones:\n{stats.error_text()}" if errors else ""))
    cost = as_uwsgi(load.server_cost(outcome.cpu_before, outcome.cpu_after, stats.judgements))
    print("  " + as_uwsgi(load.cpu_report(outcome.cpu_before, outcome.cpu_after)))
    print("  " + cost)
    print(
        f"  annotations in the database: {found.annotations} "
        f"({'matches' if count_ok else 'MISMATCH with'} warm-up {outcome.warmed} + timed "
        f"{stats.judgements}); cancelled {found.cancelled}"
    )
    print(
        f"  tasks annotated more than once: {found.multi_annotated}; duplicate (task, user) "
        f"annotations: {found.duplicate_pairs}"
    )
    print(
        f"  tasks whose is_labeled disagrees: {found.labeled_drift}; whose total_annotations "
        f"disagrees: {found.total_drift}; live task locks left: {found.live_locks}"
    )
    submit = latency.get("submit", (float("nan"), float("nan")))
    nxt = latency.get("next", (float("nan"), float("nan")))
    print(
        f"\nSUMMARY: Label Studio {facts.version}, closed loop, API, {opts.annotators} annotators,"
        f" k=1, {opts.items} tasks ({outcome.warmed} warm-up judgements): {stats.judgements} "
        f"judgements in {wall:.1f} s = {rate:.1f}/s; submit p50 {submit[0]:.0f} ms p99 "
        f"{submit[1]:.0f} ms; next p50 {nxt[0]:.0f} ms p99 {nxt[1]:.0f} ms; errors {errors}; "
        f"tasks annotated twice {found.multi_annotated}; DB/client {found.annotations}/"
        f"{expected}; {cost.split(';')[0].removeprefix('server CPU per judgement: ')} server "
        f"CPU per judgement [{cores} cores, uwsgi {server_label(opts)}, "
        f"{facts.postgres.split(',')[0]}, load average before {la1[0]:.2f}]"
    )
    return 1 if errors or not count_ok or not one_each or found.labeled_drift else 0


def refuse_foreign_redis() -> None:
    """Label Studio's RQ queues are fixed at localhost:6379: with a Redis there, imports and
    other jobs would be queued for workers that do not exist, unlike a Redis-less deployment."""
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", 6379), 1):
        sys.exit("something listens on 127.0.0.1:6379, where Label Studio looks for Redis (RQ)")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--ls-setup"]:
        ls_setup_child(json.loads(argv[1]))
        return 0
    opts = parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 65536)), hard))
    refuse_foreign_redis()
    loadavg_start = os.getloadavg()
    started = time.perf_counter()
    tag = f"{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    db = create_database(opts.database_url, tag)
    env = ls_env(opts, db)
    package = ls_package_dir(opts)
    load.log(f"database {db.name}; migrate + users + tokens in Label Studio's venv")
    setup = ls_setup(opts, env, package, tag)
    tasks, reply_chars = make_tasks(opts)
    postgres, postmaster = postgres_facts(db)
    load.log(f"starting uwsgi with deploy/uwsgi.ini ({server_label(opts)})")
    server = start_uwsgi(opts, env, package)
    try:
        owner = access_token(server.port, setup["owner_token"])
        project_id = create_project(server.port, owner, tag)
        load.log(f"project {project_id}: importing {len(tasks)} tasks")
        import_tasks(server.port, setup["owner_token"], project_id, tasks)
        analyze(db)  # as autovacuum would soon after the import
        facts = Facts(
            version=setup["version"],
            debug=setup["debug"],
            conn_max_age=setup["conn_max_age"],
            postgres=postgres,
            reply_chars=reply_chars,
            loadavg_start=loadavg_start,
            setup_seconds=time.perf_counter() - started,
        )
        load.log(f"setup done in {facts.setup_seconds:.0f} s")
        outcome = asyncio.run(drive(opts, project_id, setup["tokens"], server, db, postmaster))
    finally:
        server.stop()
    if outcome is None:
        return 1
    return report(opts, facts, outcome, check_database(db, project_id))


if __name__ == "__main__":
    sys.exit(main())
