"""Who may call what: the same role rules as the pages."""

from django.http import Http404, HttpRequest
from django.shortcuts import get_object_or_404

from core.errors import PermissionDenied
from core.roles import Role, has_role
from feedback import selectors
from feedback.models import Project


def _require(request: HttpRequest, *roles: Role) -> None:
    if not has_role(request.user, *roles):
        raise PermissionDenied("Your role does not allow this.")


def _project_for(request: HttpRequest, project_id: int) -> Project:
    if has_role(request.user, Role.ADMIN, Role.REVIEWER):
        return get_object_or_404(Project, pk=project_id)
    # Who may work on it, without the progress counts the project list shows: this runs on
    # every API request for a task, and counting a large project's items is not cheap.
    project = selectors.project_annotatable(project_id=project_id, user=request.user)
    if project is None:
        raise Http404
    return project
