from typing import Any

from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse

from core.text import refuse_lone_surrogates


class LoginRequiredExceptApiMiddleware(LoginRequiredMiddleware):
    """Pages redirect to the login page; the API answers 401 itself (tokens, not cookies)."""

    def process_view(self, request, view_func, view_args, view_kwargs):
        if request.path_info.startswith("/api/"):
            return None
        return super().process_view(request, view_func, view_args, view_kwargs)


class RefuseLoneSurrogates:
    """A 422 for a page request whose form fields, query string or file names are not text.

    A multipart body (or a query string) declared in a charset such as UTF-7 decodes to a lone
    surrogate (U+D800 to U+DFFF), which no UTF-8 encoder accepts: a view that stores it, or
    renders the form again around it, would fail with a 500. Checked once here rather than
    in every form. The API checks its own input (core.api's parser) and answers in its error
    shape. NUL is left to the forms, which say so next to the field."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(self, request, view_func, view_args, view_kwargs) -> HttpResponse | None:
        if request.path_info.startswith("/api/"):
            return None
        texts = [*_pairs(request.GET), *_pairs(request.POST)]
        texts += [(name, upload.name) for name, upload in _pairs(request.FILES)]
        try:
            for name, value in texts:
                shown = name.encode("utf-8", "backslashreplace").decode()
                refuse_lone_surrogates(name, field="a field's name")
                refuse_lone_surrogates(value, field=shown)
        except ValidationError as exc:
            return HttpResponse(
                "; ".join(f"{field}: {m}" for field, ms in exc.message_dict.items() for m in ms),
                status=422,
                content_type="text/plain; charset=utf-8",
            )
        return None


def _pairs(data) -> list[tuple[str, Any]]:
    return [(name, value) for name, values in data.lists() for value in values]
