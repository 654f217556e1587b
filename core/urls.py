from django.urls import path

from . import views

app_name = "core"  # mounted at /account/

urlpatterns = [
    path("tokens/", views.api_tokens, name="api-tokens"),
    path("tokens/<int:token_id>/revoke/", views.api_token_revoke, name="api-token-revoke"),
]
