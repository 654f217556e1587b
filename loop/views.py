"""The loop's screens (admins only): a checkpoint's next round, and one comparison batch."""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from core.forms import add_service_errors
from core.roles import Role, role_required
from loop.comparisons import comparisons_request
from loop.forms import ComparisonForm
from loop.models import ComparisonBatch
from modeling.models import Checkpoint


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def next_round(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(Checkpoint.objects.select_related("parent"), pk=checkpoint_id)
    form = ComparisonForm(request.POST or None, checkpoint=checkpoint)
    if request.method == "POST" and form.is_valid():
        try:
            batch = comparisons_request(
                checkpoint=checkpoint, requested_by=request.user, **form.request_kwargs()
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Comparison batch #{batch.pk} is queued for a GPU worker.")
            return redirect("loop:batch", batch_id=batch.pk)
    batches = ComparisonBatch.objects.filter(checkpoint=checkpoint).select_related(
        "project", "reference"
    )[:20]
    context = {"checkpoint": checkpoint, "form": form, "batches": batches}
    status = 422 if form.is_bound else 200
    return render(request, "loop/next_round.html", context, status=status)


@require_GET
@role_required(Role.ADMIN)
def batch(request: HttpRequest, batch_id: int) -> HttpResponse:
    found = get_object_or_404(
        ComparisonBatch.objects.select_related("checkpoint", "reference", "project"), pk=batch_id
    )
    template = "loop/batch.html#batch-status" if request.htmx else "loop/batch.html"
    return render(request, template, {"batch": found})
