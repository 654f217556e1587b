from django.urls import path

from . import views

app_name = "loop"

urlpatterns = [
    path("checkpoints/<int:checkpoint_id>/next-round/", views.next_round, name="next-round"),
    path("batches/<int:batch_id>/", views.batch, name="batch"),
]
