"""Admins create and edit projects here; the Django admin stays for superusers. The model checks
every setting (feedback.validators), so both refuse the same values with the same messages."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from core.roles import Role, role_required
from feedback import selectors, services
from feedback.forms import ProjectForm, label_formset, label_schema_from
from feedback.models import Project


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def project_new(request: HttpRequest) -> HttpResponse:
    return _project_page(request, None)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def project_edit(request: HttpRequest, project_id: int) -> HttpResponse:
    return _project_page(request, get_object_or_404(Project, pk=project_id))


def _project_page(request: HttpRequest, project: Project | None) -> HttpResponse:
    candidates = selectors.annotator_candidates()
    if request.method == "GET":
        form = ProjectForm(initial=_initial(project), annotators=candidates)
        labels = label_formset(schema=project.label_schema if project else [])
        return _render(request, project, form, labels)
    form = ProjectForm(request.POST, annotators=candidates)
    labels = label_formset(request.POST)
    if "add_label" not in request.POST and form.is_valid() and labels.is_valid():
        settings = form.settings() | {"label_schema": label_schema_from(labels)}
        members = form.cleaned_data["annotators"]
        try:
            if project is None:
                project = services.project_create(**settings, annotators=members)
            else:
                services.project_update(project=project, annotators=members, **settings)
        except ValidationError as exc:
            return _render(request, project, form, labels, refused=exc, status=422)
        messages.success(request, f"Project “{project.name}” is saved.")
        return redirect("feedback:project-edit", project_id=project.pk)
    status = 200 if "add_label" in request.POST else 422
    return _render(request, project, form, labels, status=status)


def _initial(project: Project | None) -> dict:
    if project is None:
        return {}
    fields = {name: getattr(project, name) for name in services.projects.PROJECT_SETTINGS}
    return fields | {"annotators": list(project.annotators.all())}


def _render(request, project, form, labels, *, refused=None, status=200) -> HttpResponse:
    """`refused`: the model's messages, each put next to its field; label ones above the
    label editor."""
    schema_errors: list[str] = []
    by_field = {}
    if refused is not None:
        by_field = (
            refused.message_dict if hasattr(refused, "error_dict") else {"": refused.messages}
        )
    for field, errors in by_field.items():
        if field == "label_schema":
            schema_errors += errors
        else:
            form.add_error(field if field in form.fields else None, errors)
    context = {"project": project, "form": form, "labels": labels, "schema_errors": schema_errors}
    return render(request, "feedback/project_form.html", context, status=status)
