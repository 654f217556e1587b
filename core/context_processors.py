from django.http import HttpRequest

from .roles import Role, user_roles


def roles(request: HttpRequest) -> dict:
    held = user_roles(request.user)
    return {
        "is_annotator": Role.ANNOTATOR in held,
        "is_reviewer": Role.REVIEWER in held,
        "is_admin": Role.ADMIN in held,
    }
