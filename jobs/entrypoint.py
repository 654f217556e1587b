"""The process a backend launches for one claimed row of background work:

    python -m jobs.entrypoint modeling.TrainingJob 42
    accelerate launch --config_file … -m jobs.entrypoint modeling.TrainingJob 42   # N processes

It sets Django up, checks the row is still `running` (the worker claimed it before launching),
and calls the row kind's `entrypoint` function with it. Rank 0 beats the heartbeat; every rank
exits when the worker that launched it (VEREDICTO_SUPERVISOR_PID) or its own parent is gone,
so a dead worker never leaves a trainer holding a GPU. The function writes the outcome to the
row; if the process dies first, the launching worker (or the sweep) fails the row with the
reason.
"""

from __future__ import annotations

import os
import sys
import threading
import time


def _exit_when_supervisor_dies(pid: int, every: float = 1.0) -> None:
    """Exit at once when the worker that launched this process is gone, or when this process's
    own parent is (a rank whose torchrun agent was killed). No cleanup: the row is the launching
    worker's, or the sweep's, to settle."""
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(every)
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                os._exit(70)
            if os.getppid() != parent:
                os._exit(70)

    threading.Thread(target=watch, name="supervisor-watch", daemon=True).start()


def main(argv: list[str]) -> int:
    if len(argv) != 2 or not argv[1].isdigit():
        print("usage: python -m jobs.entrypoint <app_label.Model> <id>", file=sys.stderr)
        return 2
    supervisor = os.environ.get("VEREDICTO_SUPERVISOR_PID")
    if supervisor:
        _exit_when_supervisor_dies(int(supervisor))
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.apps import apps
    from django.utils.module_loading import import_string

    from jobs.models import Status
    from jobs.services import Heartbeat

    model = apps.get_model(argv[0])
    row = model.objects.get(pk=int(argv[1]))
    if row.status != Status.RUNNING:
        print(f"{row} is {row.status}, not running: nothing to do", file=sys.stderr)
        return 0
    execute = import_string(model.entrypoint)
    if int(os.environ.get("RANK", "0")) == 0:
        with Heartbeat(model, row.pk):
            execute(row)
    else:
        execute(row)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
