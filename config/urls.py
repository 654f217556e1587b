from django.contrib import admin
from django.contrib.auth.decorators import login_not_required
from django.http import HttpResponse
from django.urls import include, path

from config.api import api
from config.throttle import ThrottledPasswordResetView


@login_not_required
def healthz(request):
    return HttpResponse("ok", content_type="text/plain")


admin.site.site_header = "Veredicto admin"
admin.site.site_title = "Veredicto"

urlpatterns = [
    path("api/", api.urls),
    path("admin/", admin.site.urls),
    path(
        "accounts/password_reset/",
        ThrottledPasswordResetView.as_view(),
        name="password_reset",
    ),
    path("accounts/", include("django.contrib.auth.urls")),
    path("healthz", healthz),
    # Each app's pages under its own prefix (README "Code map"); labelling is the root.
    path("account/", include("core.urls")),
    path("train/", include("modeling.urls")),
    path("evals/", include("evals.urls")),
    path("loop/", include("loop.urls")),
    path("", include("feedback.urls")),
]
