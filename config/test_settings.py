"""Settings for the test suite: the real settings with TESTING on (config.settings turns it on
when this module imports it; the environment alone cannot, unless DEBUG is on)."""

import os

from config.settings import *  # noqa: F403

if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":  # noqa: F405
    # A file, not shared-cache memory: threads in the concurrency tests need SQLite's busy
    # timeout, which shared-cache table locks ignore.
    # One file per process so parallel runs (xdist, two terminals) never share it.
    _name = f"test-veredicto-{os.getpid()}.sqlite3"
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "tmp" / _name)}  # noqa: F405
    (VAR_DIR / "tmp").mkdir(parents=True, exist_ok=True)  # noqa: F405

# Never scan collected static files that a `make run` or a benchmark may be rewriting.
STATIC_ROOT = VAR_DIR / "tmp" / "static-tests"  # noqa: F405

ALLOWED_HOSTS = ["testserver", "localhost", "127.0.0.1"]

# Registering the tiny model would queue its default evaluations in every test that trains
# from it; the tests of that behaviour turn it back on.
VEREDICTO_EVALUATE_REGISTERED = False
