"""Serving list pages whose filters are their URL, with htmx or without."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def render_filtered(
    request: HttpRequest, template: str, partial: str, context: dict[str, Any], url: str
) -> HttpResponse:
    """The whole page; or, for htmx (a filter changed), the `partial` that lists the results,
    with the address bar set to `url`: the filters chosen, not every empty field the form sent."""
    if not request.htmx:
        return render(request, template, context)
    response = render(request, f"{template}#{partial}", context)
    response["HX-Push-Url"] = url
    return response
