"""Signing in is Django's ModelBackend; loading the signed-in user also loads their roles.

Every request reads the user, and every annotation screen then asks for their roles (groups): one
joined query instead of two (bench/annotation_load.py)."""

from __future__ import annotations

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
        user = rows.instance(user_model, found[0][:-1])
        if not self.user_can_authenticate(user):
            return None
        remember_roles(user, {row[-1] for row in found if row[-1] is not None})
        return user


def _user_sql() -> str:
    user_model = get_user_model()
    memberships = user_model.groups.through._meta.db_table
    return f"""
        SELECT {rows.columns(user_model, "u")}, g.name
        FROM {user_model._meta.db_table} u
        LEFT JOIN {memberships} ug ON ug.user_id = u.{user_model._meta.pk.column}
        LEFT JOIN {Group._meta.db_table} g ON g.id = ug.group_id
        WHERE u.{user_model._meta.pk.column} = %s
    """
