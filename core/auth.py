"""Signing in is Django's ModelBackend; loading the signed-in user also loads their roles.

Every request reads the user, and every annotation screen then asks for their roles (groups): one
joined query instead of two (bench/annotation_load.py). An API token is read the same way, with
its user and their roles (core/tokens.py)."""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import AbstractBaseUser, Group
from django.core.exceptions import ValidationError

from core import rows
from core.roles import remember_roles


class RoleLoadingBackend(ModelBackend):
    def get_user(self, user_id) -> AbstractBaseUser | None:
        user_model = get_user_model()
        try:
            user_id = user_model._meta.pk.to_python(user_id)
        except ValidationError:  # a session from another user model: nobody
            return None
        found = rows.fetch(_user_sql(), [user_id])
        if not found:
            return None
        user = user_with_roles(found)
        if not self.user_can_authenticate(user):
            return None
        return user


@cache
def _user_sql() -> str:
    return user_with_roles_sql(where=f"u.{get_user_model()._meta.pk.column} = %s")


def user_with_roles_sql(*, where: str, join: str = "", also: str = "") -> str:
    """A SELECT of the user (as `u`) and one of their group names per row (NULL without any),
    then the columns `also` names from the tables `join` adds; `user_with_roles` reads it."""
    user_model = get_user_model()
    memberships = user_model.groups.through._meta.db_table
    return f"""
        SELECT {rows.columns(user_model, "u")}, g.name{f", {also}" if also else ""}
        FROM {user_model._meta.db_table} u {join}
        LEFT JOIN {memberships} ug ON ug.user_id = u.{user_model._meta.pk.column}
        LEFT JOIN {Group._meta.db_table} g ON g.id = ug.group_id
        WHERE {where}
    """


def user_with_roles(found: Sequence[Sequence[Any]]) -> AbstractBaseUser:
    """The user in the rows of a `user_with_roles_sql` query (at least one), roles remembered."""
    user_model = get_user_model()
    width = rows.width(user_model)
    user = rows.instance(user_model, found[0][:width])
    remember_roles(user, {row[width] for row in found if row[width] is not None})
    return user
