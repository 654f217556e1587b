from django.contrib.auth.middleware import LoginRequiredMiddleware
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse

from core.text import refuse_lone_surrogates_in


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
        try:
            for data in (request.GET, request.POST, request.FILES):
                refuse_lone_surrogates_in(data)
        except ValidationError as exc:
            [(field, [message])] = exc.message_dict.items()
            return HttpResponse(
                f"{field}: {message}", status=422, content_type="text/plain; charset=utf-8"
            )
        return None
