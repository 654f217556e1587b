"""Veredicto settings: one module, every knob read from the environment with a typed reader.

Defaults are friendly for `make run` (DEBUG on, SQLite under var/, local Redis). With DEBUG off the
secure defaults apply and SECRET_KEY must be given.
"""

import sys
from datetime import timedelta
from pathlib import Path

import dj_database_url
from csp.constants import NONE, SELF
from django.core.exceptions import ImproperlyConfigured
from environs import Env

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"

env = Env()
env.read_env(BASE_DIR / ".env", recurse=False)

DEBUG = env.bool("DEBUG", False)
# Test mode (a known key, fast hashing, the throwaway servers) belongs to the test suite, whose
# config/test_settings.py imports this module. VEREDICTO_TESTING asks for it from the environment
# and is refused with DEBUG off: a stray variable must not quietly weaken a production server.
_TEST_SETTINGS = "config.test_settings" in sys.modules
TESTING = _TEST_SETTINGS or env.bool("VEREDICTO_TESTING", False)
if TESTING and not (DEBUG or _TEST_SETTINGS):
    raise ImproperlyConfigured(
        "VEREDICTO_TESTING is set but DEBUG is off: test mode uses a public SECRET_KEY and weak "
        "password hashing. Unset VEREDICTO_TESTING (tests use config.test_settings)."
    )

_secret = env.str("SECRET_KEY", "") or env.str("SECRET_KEY_FILE", "")
if env.str("SECRET_KEY_FILE", ""):
    _secret = Path(env.str("SECRET_KEY_FILE")).read_text().strip()
if not _secret:
    if not (DEBUG or TESTING):
        raise ImproperlyConfigured("SECRET_KEY (or SECRET_KEY_FILE) is required when DEBUG is off.")
    _secret = "insecure-dev-key-only-for-debug-and-tests"
SECRET_KEY = _secret

ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", ["127.0.0.1", "localhost"] if DEBUG else [])
CSRF_TRUSTED_ORIGINS = env.list("CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    "template_partials",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "axes",
    "csp",
    "django_htmx",
    "ninja",
    # The project's apps, lowest first: each depends only on those above it in this list
    # (import-linter checks it; README "Code map").
    "core",
    "jobs",
    "feedback",
    "modeling",
    "evals",
    "loop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "config.middleware.LoginRequiredExceptApiMiddleware",
    "config.middleware.RefuseLoneSurrogates",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last, as django-axes asks: turns a lockout flagged during sign-in into its 429 page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "core.context_processors.roles",
            ],
        },
    },
]

# SQLite by default so a laptop needs nothing installed; PostgreSQL in production via DATABASE_URL.
DATABASES = {
    "default": dj_database_url.parse(
        env.str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'veredicto.sqlite3'}"),
        conn_max_age=env.int("DB_CONN_MAX_AGE", 60),
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # IMMEDIATE transactions serialise writers, which is what makes the task queue's
    # read-check-insert atomic on SQLite (it has no SELECT ... FOR UPDATE).
    DATABASES["default"]["OPTIONS"] = {
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
if TESTING and env.str("TEST_DATABASE_URL", ""):
    DATABASES["default"] = dj_database_url.parse(env.str("TEST_DATABASE_URL"), conn_max_age=0)
# Set by jobs/backends for the processes a worker launches: exactly the database it uses (the
# test runner, for one, works on a renamed copy).
if env.str("VEREDICTO_DATABASE_NAME", ""):
    DATABASES["default"]["NAME"] = env.str("VEREDICTO_DATABASE_NAME")
if DATABASES["default"]["ENGINE"] == "django.db.backends.postgresql" and env.bool(
    "DB_PREPARED_STATEMENTS", True
):
    # Parameters bound by the server, and a statement run 5 times on a connection is prepared:
    # the annotation loop repeats the same dozen statements, which PostgreSQL then neither parses
    # nor plans again. Turn off behind a transaction-mode pooler such as PgBouncer < 1.21.
    DATABASES["default"].setdefault("OPTIONS", {}).update(
        server_side_binding=True, prepare_threshold=5
    )

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
if TESTING:
    # Hashing dominates test time otherwise; production keeps Django's default PBKDF2.
    PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# ModelBackend's sign-in behind django-axes' lockout check; the signed-in user is loaded with
# their roles in one query. API tokens are checked without authenticate(): no lockout applies.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "core.auth.RoleLoadingBackend",
]

# Login throttling (django-axes, counted in the database so a Redis outage cannot lift it): after
# LOGIN_FAILURE_LIMIT wrong passwords for one account, or from one address, within the lockout
# time, that account (from anywhere) and that address (for any account) are refused for
# LOGIN_LOCKOUT_MINUTES; a try during the lockout starts it again. A success does not wipe the
# count (it would let anyone with one account reset their address's count at will).
# `python manage.py axes_reset_username NAME` / `axes_reset_ip ADDR` lift a lockout early.
AXES_FAILURE_LIMIT = env.int("LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = timedelta(minutes=env.float("LOGIN_LOCKOUT_MINUTES", 15))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = False
AXES_CLIENT_IP_CALLABLE = "config.throttle.client_ip"
AXES_LOCKOUT_CALLABLE = "config.throttle.lockout_response"
# Password-reset requests: at most this many per address and per e-mail address per window.
PASSWORD_RESET_LIMIT = env.int("PASSWORD_RESET_LIMIT", 5)
PASSWORD_RESET_WINDOW_SECONDS = env.int("PASSWORD_RESET_WINDOW_SECONDS", 3600)
LOGIN_URL = "login"
# A reviewer who does not annotate lands on the review queue (feedback.views.landing).
LOGIN_REDIRECT_URL = "feedback:landing"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG or TESTING
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
MEDIA_ROOT = env.path("MEDIA_ROOT", VAR_DIR / "media")

# Production hardening: on unless DEBUG.
SECURE_SSL_REDIRECT = env.bool("SECURE_SSL_REDIRECT", not DEBUG and not TESTING)
SESSION_COOKIE_SECURE = env.bool("SESSION_COOKIE_SECURE", not DEBUG and not TESTING)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
# Behind a reverse proxy that terminates TLS: only then is X-Forwarded-Proto believed (a client
# could send it itself) and the client address read from the end of X-Forwarded-For. The proxy
# must overwrite X-Forwarded-Proto and append to X-Forwarded-For.
BEHIND_PROXY = env.bool("BEHIND_PROXY", False)
if BEHIND_PROXY:
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
# HSTS (sent on HTTPS responses only): browsers then refuse plain HTTP to this host for a year.
SECURE_HSTS_SECONDS = env.int("SECURE_HSTS_SECONDS", 0 if DEBUG else 365 * 24 * 3600)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env.bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
SECURE_HSTS_PRELOAD = env.bool("SECURE_HSTS_PRELOAD", True)

# Content-Security-Policy (django-csp), in every mode: every script, style, font and image is
# served from this origin (vendored htmx and Chart.js, no CDN), and no template has inline script,
# style or event handlers, so none may run: injected markup that slipped past the sanitiser
# cannot execute. data: images are the inline favicon and the API docs' icons.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [SELF],
        "script-src": [SELF],
        "style-src": [SELF],
        "img-src": [SELF, "data:"],
        "font-src": [SELF],
        "connect-src": [SELF],
        "object-src": [NONE],
        "base-uri": [NONE],
        "form-action": [SELF],
        "frame-ancestors": [NONE],
    }
}

# Redis: the Celery broker (and result backend).
REDIS_URL = env.str("REDIS_URL", "redis://127.0.0.1:6379/0")
if TESTING and env.str("TEST_REDIS_URL", ""):
    REDIS_URL = env.str("TEST_REDIS_URL")

# Redis is also the cache, shared by every web process: rendered markdown is kept there so each
# completion is rendered once, not once per process. The cache fails soft (config/cache.py): with
# Redis unreachable a call costs at most the connect timeout, once per REDIS_CACHE_RETRY_AFTER
# seconds per process, and answers like a miss.
CACHES = {
    "default": {
        "BACKEND": "config.cache.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "veredicto",
        "OPTIONS": {
            "socket_connect_timeout": env.float("REDIS_CACHE_CONNECT_TIMEOUT", 0.25),
            "socket_timeout": env.float("REDIS_CACHE_TIMEOUT", 0.5),
            "retry_after": env.float("REDIS_CACHE_RETRY_AFTER", 1.0),
        },
    }
}
# Sessions live in the database only. Through a cache (cached_db) an outage either fails every
# request or, failing soft, misses a sign-out's delete, and the signed-out session is served
# again from Redis once it returns. One primary-key read per request is the price.
SESSION_ENGINE = "django.contrib.sessions.backends.db"

# The app that sends background work's messages (jobs.services.work_send).
VEREDICTO_CELERY_APP = "config.celery.app"
CELERY_BROKER_URL = REDIS_URL
CELERY_RESULT_BACKEND = REDIS_URL
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_RESULT_EXPIRES = 3600
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Long training jobs: Redis redelivers an unacked message after this; jobs claim idempotently.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "visibility_timeout": env.int("CELERY_VISIBILITY_TIMEOUT", 43200)
}

# Annotation and import limits.
VEREDICTO_MAX_TEXT_CHARS = env.int("VEREDICTO_MAX_TEXT_CHARS", 20_000)
VEREDICTO_IMPORT_MAX_BYTES = env.int("VEREDICTO_IMPORT_MAX_BYTES", 4 * 1024**3)
VEREDICTO_IMPORT_MAX_ROWS = env.int("VEREDICTO_IMPORT_MAX_ROWS", 5_000_000)
# Opt-in (issue #19): imports on PostgreSQL turn foreign-key triggers off while their rows go
# in (session_replication_role = replica) when the role may, and keep the keys by construction
# instead. Off, the database checks every key as usual: the production default.
VEREDICTO_IMPORT_TRIGGERS_OFF = env.bool("VEREDICTO_IMPORT_TRIGGERS_OFF", False)
# Rendered markdown kept in each web process (text + HTML, UTF-8 bytes, least recently used
# dropped first), and the largest text + HTML kept at all, here or in Redis.
VEREDICTO_MARKDOWN_CACHE_BYTES = env.int("VEREDICTO_MARKDOWN_CACHE_BYTES", 32 * 1024**2)
VEREDICTO_MARKDOWN_ENTRY_BYTES = env.int("VEREDICTO_MARKDOWN_ENTRY_BYTES", 256 * 1024)

# Background work (training jobs, evaluation runs, comparison generation, imports, snapshots;
# jobs.services). While a row runs, a thread in its worker writes `heartbeat_at` every HEARTBEAT
# seconds (progress writes count too). Celery beat runs the sweep every SWEEP seconds: a running
# row silent for STALE seconds is failed ("worker stopped responding"), as is one past its hard
# time limit; a worker that starts fails the rows it left running at once. Keep STALE well above
# HEARTBEAT plus a slow database write.
VEREDICTO_JOB_HEARTBEAT_SECONDS = env.float("VEREDICTO_JOB_HEARTBEAT_SECONDS", 10.0)
VEREDICTO_JOB_STALE_SECONDS = env.float("VEREDICTO_JOB_STALE_SECONDS", 60.0)
VEREDICTO_JOB_SWEEP_SECONDS = env.float("VEREDICTO_JOB_SWEEP_SECONDS", 15.0)
# How long an API Idempotency-Key is remembered (core.idempotency); the sweep forgets older ones.
IDEMPOTENCY_KEY_HOURS = env.float("IDEMPOTENCY_KEY_HOURS", 24.0)
# Where a worker launches training, evaluation and generation (jobs/backends/): "local" (a child
# process group on the worker's host, under `accelerate launch` for several devices) or "ray" (a
# Ray job on the cluster at VEREDICTO_RAY_ADDRESS, e.g. http://head:8265).
VEREDICTO_JOB_BACKEND = env.str("VEREDICTO_JOB_BACKEND", "local")
if VEREDICTO_JOB_BACKEND not in ("local", "ray"):
    raise ImproperlyConfigured("VEREDICTO_JOB_BACKEND is 'local' or 'ray'.")
VEREDICTO_RAY_ADDRESS = env.str("VEREDICTO_RAY_ADDRESS", "")
if VEREDICTO_JOB_BACKEND == "ray" and not VEREDICTO_RAY_ADDRESS:
    raise ImproperlyConfigured("VEREDICTO_JOB_BACKEND=ray needs VEREDICTO_RAY_ADDRESS.")
# The interpreter on the Ray hosts (default: this worker's, for hosts built from one image).
VEREDICTO_RAY_PYTHON = env.str("VEREDICTO_RAY_PYTHON", "")
# Cancel and the time limit send SIGTERM to the work's process group, SIGKILL this much later.
VEREDICTO_JOB_KILL_GRACE_SECONDS = env.float("VEREDICTO_JOB_KILL_GRACE_SECONDS", 10.0)
# A registered model gets the default evaluations, as a trained checkpoint does (the tests turn
# this off: most register the tiny model only to train from it).
VEREDICTO_EVALUATE_REGISTERED = env.bool("VEREDICTO_EVALUATE_REGISTERED", True)
# Work that ended its own row (a trainer announcing its checkpoint) may run on this long before
# it is stopped; so may work whose row the sweep ended.
VEREDICTO_JOB_EXIT_GRACE_SECONDS = env.float("VEREDICTO_JOB_EXIT_GRACE_SECONDS", 60.0)
# Devices this worker owns, announced when it starts (default: the GPUs `nvidia-smi -L` lists,
# else 1). A job asking for more processes than any worker owns is refused at launch.
VEREDICTO_WORKER_DEVICES = env.int("VEREDICTO_WORKER_DEVICES", 0)
# Fault drills only: a worker pauses this long right after claiming a row, so that a test can
# kill it mid-run (tests/jobs/test_worker_faults.py). Refused outside DEBUG/testing below.
VEREDICTO_FAULT_DRILL_PAUSE_SECONDS = env.float("VEREDICTO_FAULT_DRILL_PAUSE_SECONDS", 0.0)
if VEREDICTO_FAULT_DRILL_PAUSE_SECONDS and not (DEBUG or TESTING):
    raise ImproperlyConfigured("VEREDICTO_FAULT_DRILL_PAUSE_SECONDS is for tests and DEBUG only.")
# Progress (step, metrics, log tail) is written at most this often; cancel is polled as often.
VEREDICTO_JOB_PROGRESS_SECONDS = env.float("VEREDICTO_JOB_PROGRESS_SECONDS", 1.0)
# Default wall-clock limit of one training attempt (Celery soft limit; the hard one adds 5 min).
VEREDICTO_JOB_TIME_LIMIT_SECONDS = env.int("VEREDICTO_JOB_TIME_LIMIT_SECONDS", 24 * 3600)
# The GPU workers have CUDA and bitsandbytes (`pip install ".[gpu]"`): jobs may load their base
# in 4 bits (QLoRA, a job config's "quantization": "4bit"). Off: launch refuses such jobs. The web
# process cannot see the workers' libraries, so the deployment says so here.
VEREDICTO_GPU_BITSANDBYTES = env.bool("VEREDICTO_GPU_BITSANDBYTES", False)
# Job outputs go to <dir>/<job id>-<attempt>/. Empty: MEDIA_ROOT/checkpoints.
VEREDICTO_MODELS_DIR = env.str("VEREDICTO_MODELS_DIR", "")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "INFO"}},
}
