"""Who is asking, and how often: the client address and the answer for the login lockout
(django-axes, configured in settings) and the throttle on password-reset requests."""

from __future__ import annotations

import hashlib

from django.conf import settings
from django.contrib.auth.views import PasswordResetView
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from config.cache import OUTAGE_ERRORS


def client_ip(request: HttpRequest) -> str:
    """REMOTE_ADDR; behind our proxy (BEHIND_PROXY) the address it appended to X-Forwarded-For.
    Only the rightmost entry is the proxy's: anything left of it is whatever the client sent."""
    if settings.BEHIND_PROXY:
        appended = request.META.get("HTTP_X_FORWARDED_FOR", "").rsplit(",", 1)[-1].strip()
        if appended:
            return appended
    return request.META.get("REMOTE_ADDR", "")


def over_limit(scope: str, who: str, *, limit: int, window_seconds: int) -> bool:
    """Count one request by `who` in a fixed window; True once the count passes `limit`.
    Counts live in the cache: with Redis down the throttle lets requests through (the login
    lockout, which matters more, is kept in the database)."""
    key = f"throttle:{scope}:{hashlib.sha256(who.encode()).hexdigest()}"
    try:
        cache.add(key, 0, window_seconds)
        return cache.incr(key) > limit
    except (ValueError, *OUTAGE_ERRORS):  # ValueError: the key expired between add and incr
        return False


class ThrottledPasswordResetView(PasswordResetView):
    """Django's reset form, limited per address and per e-mail address so that nobody can
    flood an inbox or hammer the form; a refusal is a 429 page saying when to try again."""

    def form_valid(self, form) -> HttpResponse:
        limit, window = settings.PASSWORD_RESET_LIMIT, settings.PASSWORD_RESET_WINDOW_SECONDS
        address = client_ip(self.request)
        email = form.cleaned_data["email"].strip().lower()
        # Both counters move on every request, so neither can be probed without the other.
        by_address = over_limit("reset-ip", address, limit=limit, window_seconds=window)
        by_email = over_limit("reset-email", email, limit=limit, window_seconds=window)
        if by_address or by_email:
            return _throttled(self.request, minutes=window // 60)
        return super().form_valid(form)


def lockout_response(
    request: HttpRequest, response: HttpResponse | None = None, credentials: dict | None = None
) -> HttpResponse:
    """django-axes' answer to a locked-out sign-in (AXES_LOCKOUT_CALLABLE)."""
    context = {
        "failure_limit": settings.AXES_FAILURE_LIMIT,
        "minutes": round(settings.AXES_COOLOFF_TIME.total_seconds() / 60),
    }
    return render(request, "registration/locked_out.html", context, status=429)


def _throttled(request: HttpRequest, *, minutes: int) -> HttpResponse:
    context = {"what": "password reset requests", "minutes": minutes}
    return render(request, "registration/throttled.html", context, status=429)
