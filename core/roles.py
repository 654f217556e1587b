"""Roles are Django groups. Admin also covers superusers so `createsuperuser` just works."""

from collections.abc import Callable, Iterable
from enum import StrEnum
from functools import wraps

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse


class Role(StrEnum):
    ANNOTATOR = "annotator"
    REVIEWER = "reviewer"
    ADMIN = "admin"


def user_roles(user: AbstractBaseUser | AnonymousUser) -> frozenset[str]:
    if not user.is_authenticated:
        return frozenset()
    cached = getattr(user, "_veredicto_roles", None)
    if cached is None:  # core.auth loads them with the user of a request
        cached = remember_roles(user, user.groups.values_list("name", flat=True))
    return cached


def remember_roles(user: AbstractBaseUser, group_names: Iterable[str]) -> frozenset[str]:
    roles = frozenset(group_names) | ({Role.ADMIN} if user.is_superuser else set())
    user._veredicto_roles = roles
    return roles


def has_role(user: AbstractBaseUser | AnonymousUser, *roles: Role) -> bool:
    return bool(user_roles(user) & set(roles))


def role_required(*roles: Role) -> Callable:
    """View decorator: 403 unless the user holds one of `roles` (login is enforced globally)."""

    def decorator(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
        @wraps(view)
        def wrapped(request: HttpRequest, *args, **kwargs) -> HttpResponse:
            if not has_role(request.user, *roles):
                raise PermissionDenied("Your role does not allow this page.")
            return view(request, *args, **kwargs)

        return wrapped

    return decorator


def require_admin(user: AbstractBaseUser | None, action: str) -> None:
    """For services: `None` is the operator at a shell (management commands); a user must hold
    the admin role."""
    if user is not None and not has_role(user, Role.ADMIN):
        raise PermissionDenied(f"Only admins can {action}.")
