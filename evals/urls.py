from django.urls import path

from . import views

app_name = "evals"  # mounted at /evals/

urlpatterns = [
    path("dashboard/", views.dashboard, name="dashboard"),
    path("dashboard/evaluations.csv", views.dashboard_csv, name="dashboard-csv"),
    path("dashboard/compare/", views.compare, name="eval-compare"),
    path("dashboard/chart-default/", views.chart_default, name="chart-default"),
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
    path("arena/", views.arena, name="arena"),
    path("projects/<int:project_id>/arena/", views.arena_settings, name="arena-settings"),
    path("projects/<int:project_id>/battles/new/", views.battle_new, name="battle-new"),
    path("battles/<int:battle_id>/", views.battle, name="battle"),
    path("battles/<int:battle_id>/vote/", views.battle_vote, name="battle-vote"),
]
