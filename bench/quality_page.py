"""How long the Quality page takes on a project with thousands of pairwise judgements, and how
much of it the Dawid–Skene fit is.

    OMP_NUM_THREADS=1 .venv/bin/python config/devservices.py test -- \\
        .venv/bin/python bench/quality_page.py [--items 2000] [--overlap 3] [--annotators 30]

Setup (untimed): `migrate` on the throwaway PostgreSQL devservices starts, then a pairwise
project whose items are each judged by `--overlap` of `--annotators` annotators (written with
bulk_create; a third of the annotators careless). Timed, --repeats times each: the page through
django.test.Client (what a server spends, less WSGI), the report alone, the Dawid–Skene fit
on the same votes, and a preference snapshot built by majority and by Dawid–Skene. Medians, wall
and CPU of this process (PostgreSQL's share is in wall only).
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
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--overlap", type=int, default=3)
    parser.add_argument("--annotators", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.update(
        DJANGO_SETTINGS_MODULE="config.settings",
        DATABASE_URL=os.environ["TEST_DATABASE_URL"],
        DEBUG="0",
        SECRET_KEY="bench-only",
        ALLOWED_HOSTS="testserver",
        SECURE_SSL_REDIRECT="0",
    )
    os.environ.pop("VEREDICTO_TESTING", None)
    for command in (["migrate", "--noinput"], ["collectstatic", "--noinput"]):
        # collectstatic: with DEBUG off the manifest storage needs var/static to render pages.
        subprocess.run([sys.executable, "manage.py", *command, "-v", "0"], cwd=REPO, check=True)
    sys.path.insert(0, str(REPO))
    import django

    django.setup()
    project = build(args)
    measure(project, args.repeats)


def build(args):
    import numpy as np
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group

    from core.roles import Role
    from feedback import services
    from feedback.models import Assignment, AssignmentStatus, PairwiseJudgement, Project

    rng = np.random.default_rng(0)
    project = Project.objects.create(name=f"quality bench {time.time():.0f}", overlap=args.overlap,
                                     task_kinds=["pairwise"])  # fmt: skip
    users = [get_user_model().objects.create(username=f"qb{project.pk}-{i}")
             for i in range(args.annotators)]  # fmt: skip
    admin = get_user_model().objects.create(username=f"qb{project.pk}-admin")
    admin.groups.add(Group.objects.get_or_create(name=str(Role.ADMIN))[0])
    started = time.perf_counter()
    items = []
    for i in range(args.items):
        prompt = services.prompt_create(project=project, messages=f"Question {i}?")
        completions = [services.completion_create(prompt=prompt, text=f"Answer {i}.{k}",
                                                  model_name="m") for k in range(2)]  # fmt: skip
        items.append(services.item_create(project=project, kind="pairwise", prompt=prompt,
                                          completions=completions))  # fmt: skip
    judges = [rng.choice(args.annotators, args.overlap, replace=False) for _ in items]
    assignments = Assignment.objects.bulk_create(
        Assignment(item=item, annotator=users[who], status=AssignmentStatus.SUBMITTED,
                   expires_at="2100-01-01T00:00Z")
        for item, whos in zip(items, judges, strict=True) for who in whos
    )  # fmt: skip
    choices = ("a", "b", "tie", "both_bad")
    judgements = []
    for a in assignments:
        careless = a.annotator_id % 3 == 0
        truth = "ab"[a.item_id % 2]
        choice = choices[rng.integers(4)] if careless and rng.random() < 0.6 else truth
        judgements.append(PairwiseJudgement(
            assignment=a, item_id=a.item_id, annotator_id=a.annotator_id, choice=choice,
            strength="clear", shown_left="ab"[rng.integers(2)], seconds_spent=10.0))  # fmt: skip
    PairwiseJudgement.objects.bulk_create(judgements)
    print(f"{len(judgements)} judgements on {len(items)} items by {args.annotators} annotators "
          f"(setup {time.perf_counter() - started:.0f} s)")  # fmt: skip
    project.bench_admin = admin
    return project


def measure(project, repeats: int) -> None:
    from django.core.exceptions import ValidationError
    from django.test import Client

    from feedback.models import PairwiseJudgement
    from feedback.quality.reports import project_quality

    try:
        from feedback.quality.dawid_skene import dawid_skene
    except ImportError:  # a checkout from before it existed
        dawid_skene = None

    client = Client()
    client.force_login(project.bench_admin)
    votes = list(PairwiseJudgement.objects.filter(item__project=project)
                 .values_list("item_id", "annotator_id", "choice"))  # fmt: skip
    timed = {
        "page (GET /projects/<id>/quality/)": lambda: client.get(
            f"/projects/{project.pk}/quality/"
        ),
        "report (project_quality)": lambda: project_quality(project),
        "Dawid–Skene fit alone": lambda: dawid_skene(votes) if dawid_skene else None,
        "preference snapshot, majority": lambda: snapshot(project, "majority"),
        "preference snapshot, dawid_skene": lambda: snapshot(project, "dawid_skene"),
    }
    for name, call in timed.items():
        try:
            call()  # warm
        except ValidationError as refused:  # a checkout from before the option existed
            print(f"{name}: refused ({refused.messages[0]})")
            continue
        walls, cpus = [], []
        for _ in range(repeats):
            wall, cpu = time.perf_counter(), time.process_time()
            result = call()
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
        if hasattr(result, "status_code"):
            assert result.status_code == 200
        print(f"{name}: wall {median(walls) * 1000:.0f} ms, CPU {median(cpus) * 1000:.0f} ms")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    if os.environ.get("QUALITY_BENCH_PROFILE"):
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(project_quality, project)
        pstats.Stats(profile).sort_stats("cumulative").print_stats(25)


def snapshot(project, aggregation: str) -> None:
    from django.conf import settings

    from feedback import services

    settings.MEDIA_ROOT = "/tmp/quality-bench-media"
    policy = {"test_fraction": 0, "aggregation": aggregation}
    built = services.snapshot_create(project=project, kind="preference", policy=policy)
    assert built.status == "succeeded", built.error


if __name__ == "__main__":
    main()
