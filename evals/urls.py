from django.urls import path

from . import views

app_name = "evals"  # mounted at /evals/

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/evaluations.csv", views.dashboard_csv, name="dashboard-csv"),
    path("dashboard/compare/", views.compare, name="eval-compare"),
    path(
        "dashboard/checkpoints/<int:checkpoint_id>/", views.checkpoint_evals, name="eval-checkpoint"
    ),
    path(
        "dashboard/checkpoints/<int:checkpoint_id>/defaults/",
        views.checkpoint_defaults,
        name="eval-defaults",
    ),
    path("runs/new/", views.run_new, name="eval-run-new"),
    path("runs/<int:run_id>/", views.run_detail, name="eval-run"),
    path("runs/<int:run_id>/rerun/", views.run_rerun, name="eval-run-rerun"),
    path("projects/<int:project_id>/leaderboard/", views.leaderboard, name="leaderboard"),
]
