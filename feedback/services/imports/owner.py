"""Who imported labels belong to: their source, never the person who uploaded the file.

Every judgement and assignment names an annotator, and history, progress, quality, the records
filter, the API and the snapshots' trust filters all read that column. Rather than make it
nullable, and teach each of those readers about a judgement without an annotator, imported
labels get one system user per deployment as their annotator: no reader meets a missing
annotator, per-person pages (history, "my" counts) find nothing of imports under anyone's name,
and what a label is shown as is decided by its origin (`JudgementBase.credited_to`: "imported
from <source>"). Their assignments have the status `imported`, which the queue never counts as
one of an item's slots.

The user can never act as a person: inactive (no sign-in; API tokens of inactive users do not
work), with an unusable password and no roles (so no queue, and no list of annotators names
it), under a username that Django's username validator refuses (it holds a space), so no person
can sign up as, or be renamed to, it.
"""

from __future__ import annotations

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import AbstractBaseUser

# Also written into migration 0016, which moved the labels imported before it to this user.
IMPORTED_LABELS_USERNAME = "imported labels"


def imported_labels_owner() -> AbstractBaseUser:
    """The system user that owns every imported label (created on first use)."""
    user_model = get_user_model()
    user, _ = user_model.objects.get_or_create(
        **{user_model.USERNAME_FIELD: IMPORTED_LABELS_USERNAME},
        defaults={"is_active": False, "password": make_password(None)},
    )
    return user
