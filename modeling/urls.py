from django.urls import path

from . import views

app_name = "modeling"  # mounted at /train/

urlpatterns = [
    path("jobs/", views.jobs, name="jobs"),
    path("jobs/new/<str:kind>/", views.job_new, name="job-new"),
    path("jobs/new/<str:kind>/validate/", views.job_validate, name="job-validate"),
    path("jobs/<int:job_id>/", views.job, name="job"),
    path("jobs/<int:job_id>/cancel/", views.job_cancel, name="job-cancel"),
    path("jobs/<int:job_id>/rerun/", views.job_rerun, name="job-rerun"),
    path("checkpoints/<int:checkpoint_id>/", views.checkpoint, name="checkpoint"),
    path("checkpoints/<int:checkpoint_id>/playground/", views.playground, name="playground"),
    path(
        "checkpoints/<int:checkpoint_id>/playground/<int:turn_id>/",
        views.playground_turn,
        name="playground-turn",
    ),
    path("projects/<int:project_id>/assist/", views.assist, name="assist"),
    path("projects/<int:project_id>/assist/drafter/", views.assist_drafter, name="assist-drafter"),
    path("projects/<int:project_id>/assist/<str:kind>/", views.assist_run_new, name="assist-run"),
]
