"""The user's own account pages: personal API tokens."""

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods, require_POST

from core import tokens


@require_http_methods(["GET", "POST"])
def api_tokens(request: HttpRequest) -> HttpResponse:
    new_key = error = ""
    if request.method == "POST":
        try:
            _, new_key = tokens.token_create(user=request.user, name=request.POST.get("name", ""))
        except ValidationError as exc:
            error = "; ".join(exc.messages)
    context = {
        "tokens": request.user.api_tokens.all(),
        "new_key": new_key,
        "error": error,
    }
    return render(request, "core/api_tokens.html", context, status=422 if error else 200)


@require_POST
def api_token_revoke(request: HttpRequest, token_id: int) -> HttpResponse:
    try:
        tokens.token_revoke(user=request.user, token_id=token_id)
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
    else:
        messages.success(request, "Token revoked: requests using it now get 401.")
    return redirect("core:api-tokens")
