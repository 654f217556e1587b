"""The apps' dependency direction (README "Code map"), checked by import-linter on every run."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def lint_imports(config: Path | None = None) -> subprocess.CompletedProcess:
    command = [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)


def test_every_app_imports_only_the_apps_below_it():
    result = lint_imports()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 kept, 0 broken" in result.stdout


def test_the_contract_catches_an_import_against_the_direction(tmp_path):
    # The same contract upside down must break (feedback imports core, for one): so the check
    # above reads the real import graph and is not passing vacuously.
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]
    contract = settings["contracts"][0]
    upside_down = list(reversed(contract["layers"]))
    config = tmp_path / "importlinter.ini"
    config.write_text(
        "[importlinter]\n"
        "root_packages =\n    " + "\n    ".join(settings["root_packages"]) + "\n"
        "[importlinter:contract:upside-down]\n"
        "name = upside down\ntype = layers\n"
        "layers =\n    " + "\n    ".join(upside_down) + "\n"
    )
    result = lint_imports(config)
    assert result.returncode != 0
    assert "feedback is not allowed to import core" in result.stdout
