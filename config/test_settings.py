"""Settings for the test suite: the real settings with TESTING on (set before they are read)."""

import os

os.environ["VEREDICTO_TESTING"] = "1"

from config.settings import *  # noqa: F403
