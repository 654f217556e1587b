"""What a task screen's progress ("12 of 61 · 49 left") costs an annotator with a long history
in other projects.

    OMP_NUM_THREADS=1 .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/progress_history.py [--histories 100,1000,5000,20000]

Setup (untimed): `migrate` on the throwaway PostgreSQL devservices starts, a 3,000-item project
the annotator has not started, and another project in which they submit, with bulk_create, as
many judgements as each --histories figure, ANALYZEd. Timed: feedback.selectors.
annotator_progress on the first project, 10 calls to warm up, then the median of 30 (wall time,
this process and PostgreSQL together). Its cost should not move with the history elsewhere.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path
from statistics import median

REPO = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--histories", default="100,1000,5000,20000")
    parser.add_argument("--items", type=int, default=3000, help="items of the project timed")
    args = parser.parse_args()
    histories = sorted(int(n) for n in args.histories.split(","))
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=os.environ["TEST_DATABASE_URL"],
        DEBUG="0",
        SECRET_KEY="bench-only",
    )
    os.environ.pop("VEREDICTO_TESTING", None)
    subprocess.run([sys.executable, "manage.py", "migrate", "-v", "0"], cwd=REPO, check=True)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from feedback.models import Assignment, AssignmentStatus, Item, Project, Prompt, TaskKind
    from feedback.selectors import annotator_progress

    me = get_user_model().objects.create_user(f"veteran-{time.time():.0f}")
    fresh = Project.objects.create(name="new to me", task_kinds=[TaskKind.DEMONSTRATION])
    elsewhere = Project.objects.create(name="my history", task_kinds=[TaskKind.DEMONSTRATION])
    now = timezone.now()

    def items(project: Project, n: int, start: int) -> list[Item]:
        prompts = Prompt.objects.bulk_create(
            Prompt(
                project=project,
                messages=[{"role": "user", "content": f"Question {start + i}?"}],
                content_hash=f"{project.pk}-{start + i}",
            )
            for i in range(n)
        )
        return Item.objects.bulk_create(
            Item(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt) for prompt in prompts
        )

    items(fresh, args.items, 0)
    done = 0
    print(f"annotator_progress on a {args.items}-item project the annotator has not started")
    for history in histories:
        judged = items(elsewhere, history - done, done)
        Assignment.objects.bulk_create(
            Assignment(
                item=item,
                annotator=me,
                status=AssignmentStatus.SUBMITTED,
                expires_at=now,
                finished_at=now,
            )
            for item in judged
        )
        Item.objects.filter(pk__in=[item.pk for item in judged]).update(submitted_count=1)
        done = history
        with connection.cursor() as cursor:
            cursor.execute("ANALYZE")
        for _ in range(10):
            annotator_progress(project=fresh, annotator=me)
        times = []
        for _ in range(30):
            started = time.perf_counter()
            progress = annotator_progress(project=fresh, annotator=me)
            times.append(time.perf_counter() - started)
        print(
            f"  {history:>6} judgements in another project: {1000 * median(times):6.2f} ms "
            f"median (done {progress.done}, left {progress.left})",
            flush=True,
        )


if __name__ == "__main__":
    main()
