"""Demo content: a small project that shows every task kind, loaded by `manage.py seed_demo`."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.db import transaction

from core.roles import Role
from feedback import services
from feedback.models import Project, TaskKind

PROMPTS_FILE = Path(__file__).with_name("prompts.jsonl")
DEMO_PROJECT = "Assistant replies (demo)"
DEMO_USERS = [
    ("admin", [Role.ADMIN], True),
    ("reviewer", [Role.REVIEWER], False),
    ("annotator1", [Role.ANNOTATOR], False),
    ("annotator2", [Role.ANNOTATOR], False),
]
GUIDELINES = """\
**Judge the reply, not the model.** Prefer replies that are correct, helpful and safe.

- *Correct* beats *fluent*: a confident wrong answer is worse than a short right one.
- Refusing a harmful request is good; refusing a harmless one is not.
- Use **tie** when both are equally good, **both bad** when neither should be shown to a user.
- Strength: *slightly* for a small edge, *much* when one reply is clearly unusable.
"""
LABEL_SCHEMA = [
    {"name": "helpfulness", "kind": "likert", "min": 1, "max": 7, "label": "Helpfulness"},
    {"name": "unsafe", "kind": "flag", "label": "Unsafe content"},
    {"name": "factually_wrong", "kind": "flag", "label": "Factually wrong"},
]


def ensure_roles() -> None:
    for role in Role:
        Group.objects.get_or_create(name=role.value)


def ensure_demo_users() -> dict[str, str]:
    """Create missing demo users; returns {username: password} for the ones created now."""
    ensure_roles()
    User = get_user_model()
    created: dict[str, str] = {}
    for username, roles, is_admin in DEMO_USERS:
        if User.objects.filter(username=username).exists():
            continue
        password = secrets.token_urlsafe(9)
        user = User.objects.create_user(
            username=username, password=password, is_staff=is_admin, is_superuser=is_admin
        )
        user.groups.set(Group.objects.filter(name__in=roles))
        created[username] = password
    return created


@transaction.atomic
def load_demo_project() -> Project:
    existing = Project.objects.filter(name=DEMO_PROJECT).first()
    if existing:
        return existing
    project = services.project_create(
        name=DEMO_PROJECT,
        description="Write ideal replies, compare and rank model replies.",
        task_kinds=[TaskKind.PAIRWISE, TaskKind.RANKING, TaskKind.DEMONSTRATION],
        overlap=2,
        guidelines=GUIDELINES,
        label_schema=LABEL_SCHEMA,
    )
    for line in PROMPTS_FILE.read_text().splitlines():
        row = json.loads(line)
        prompt = services.prompt_create(
            project=project, messages=row["messages"], system=row.get("system", ""), source="demo"
        )
        completions = [
            services.completion_create(prompt=prompt, text=c["text"], model_name=c["model"])
            for c in row.get("completions", [])
        ]
        if len(completions) >= 2:
            services.item_create(
                project=project, kind=TaskKind.PAIRWISE, prompt=prompt, completions=completions[:2]
            )
        if len(completions) >= 3:
            services.item_create(
                project=project, kind=TaskKind.RANKING, prompt=prompt, completions=completions
            )
        if len(completions) != 2:
            services.item_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt)
    return project
