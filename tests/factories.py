"""factory_boy factories. Content goes through the services where rules apply (hashes, items)."""

from __future__ import annotations

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from core.roles import Role
from feedback import services
from feedback.models import Assignment, Item, Project, TaskKind


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.django.Password("pw")

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        for role in extracted or ():
            group, _ = Group.objects.get_or_create(name=str(role))
            self.groups.add(group)


def annotator(username: str | None = None):
    kwargs = {"username": username} if username else {}
    return UserFactory(roles=[Role.ANNOTATOR], **kwargs)


class ProjectFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Project

    name = factory.Sequence(lambda n: f"Project {n}")
    task_kinds = [TaskKind.DEMONSTRATION, TaskKind.PAIRWISE, TaskKind.RANKING]
    overlap = 1
    lease_seconds = 600
    guidelines = "Be **kind**."


def make_prompt(project: Project, text: str | None = None, **kwargs):
    make_prompt.counter += 1
    return services.prompt_create(
        project=project, messages=text or f"Prompt number {make_prompt.counter}?", **kwargs
    )


make_prompt.counter = 0


def make_item(project: Project, kind: str = TaskKind.PAIRWISE, *, n: int | None = None, texts=None):
    """An item of `kind` on a fresh prompt, with n completions (2 for pairwise, 4 for ranking)."""
    prompt = make_prompt(project)
    n = n if n is not None else {"pairwise": 2, "ranking": 4, "demonstration": 0}[kind]
    texts = texts or [f"Answer {i} to {prompt.pk}" for i in range(n)]
    completions = [
        services.completion_create(prompt=prompt, text=text, model_name=f"model-{i}")
        for i, text in enumerate(texts)
    ]
    return services.item_create(project=project, kind=kind, prompt=prompt, completions=completions)


def submit_judgement(item: Item, user, **answer):
    """`user` judges `item` through the submit services, on an assignment made directly (the
    test decides who judges what): pairwise takes `choice` (and `strength`), a ranking its
    `ranking` (by default the replies in position order), a demonstration its `text`."""
    assignment = Assignment.objects.create(
        item=item, annotator=user, expires_at="2100-01-01T00:00Z"
    )
    if item.kind == TaskKind.PAIRWISE:
        return services.pairwise_submit(assignment_id=assignment.pk, annotator=user, **answer)
    if item.kind == TaskKind.RANKING:
        ids = [ic.completion_id for ic in item.item_completions.all()]
        ranking = answer.get("ranking") or [[cid] for cid in ids]
        return services.ranking_submit(assignment_id=assignment.pk, annotator=user, ranking=ranking)
    text = answer.get("text", "A reply.")
    return services.demonstration_submit(assignment_id=assignment.pk, annotator=user, text=text)


def outvoted_answers() -> list[tuple]:
    """(item, annotator, choice): a careful annotator outvoted by two careless ones on item "x"
    (A is right there). On 12 other items the careful one and a second careful one always give
    the true answer (A and B in turn) while each careless one is right on half of them, never
    on the same half: Dawid–Skene learns whom to believe there."""
    other = {"a": "b", "b": "a"}
    answers = []
    for i in range(12):
        truth = "ab"[i % 2]
        answers += [
            (i, "careful", truth),
            (i, "careful2", truth),
            (i, "careless1", truth if i % 4 < 2 else other[truth]),
            (i, "careless2", truth if i % 4 in (0, 3) else other[truth]),
        ]
    return [*answers, ("x", "careful", "a"), ("x", "careless1", "b"), ("x", "careless2", "b")]


def outvoted_crowd(project: Project) -> Item:
    """`outvoted_answers` as judgements in `project`; returns item "x", whose replies are
    "right" (A) and "wrong"."""
    users = {name: annotator(name) for name in ("careful", "careful2", "careless1", "careless2")}
    items = {}
    for key, name, choice in outvoted_answers():
        if key not in items:
            items[key] = make_item(project, texts=["right", "wrong"] if key == "x" else None)
        submit_judgement(items[key], users[name], choice=choice, strength="clear")
    return items["x"]
