from django.urls import path

from . import views
from .models import TaskKind

# The labelling workspace is the site's root: every page not under /account/, /train/, /evals/,
# /loop/, /api/ or /admin/ is this app's.
app_name = "feedback"

urlpatterns = [
    path("", views.home, name="home"),
    path("start/", views.landing, name="landing"),
    path("projects/<int:project_id>/work/", views.work, name="work"),
    path("projects/<int:project_id>/progress/", views.progress, name="progress"),
    path("tasks/<int:assignment_id>/", views.task, name="task"),
    path("tasks/<int:assignment_id>/submit/", views.submit, name="submit"),
    path("tasks/<int:assignment_id>/skip/", views.skip, name="skip"),
    path("history/", views.history, name="history"),
    path("markdown/preview/", views.markdown_preview, name="markdown-preview"),
]

urlpatterns += [
    path("projects/new/", views.project_new, name="project-new"),
    path("projects/<int:project_id>/edit/", views.project_edit, name="project-edit"),
    path("projects/<int:project_id>/records/", views.records, name="records"),
    path("projects/<int:project_id>/records/bulk/", views.records_bulk, name="records-bulk"),
    path("records/<int:item_id>/", views.record, name="record"),
    path("review/", views.review_queue, name="review-queue"),
    path("review/accept/", views.review_accept, name="review-accept"),
    path(
        "review/<str:kind>/<int:judgement_id>/",
        views.review_judgement,
        name="review-judgement",
    ),
    # Demonstrations were the only kind reviewed once: their links keep working.
    path(
        "review/<int:judgement_id>/",
        views.review_judgement,
        {"kind": TaskKind.DEMONSTRATION},
        name="review-demonstration",
    ),
    path("projects/<int:project_id>/quality/", views.quality, name="quality"),
    path("projects/<int:project_id>/disagreements/", views.disagreements, name="disagreements"),
    path("items/<int:item_id>/adjudicate/", views.adjudicate, name="adjudicate"),
    path("projects/<int:project_id>/data/", views.data_page, name="data"),
    path("projects/<int:project_id>/data/preview/", views.import_preview, name="import-preview"),
    path("projects/<int:project_id>/data/import/", views.import_start, name="import-start"),
    path("projects/<int:project_id>/snapshots/", views.snapshot_create, name="snapshot-create"),
    path("imports/<int:import_id>/", views.import_detail, name="import-detail"),
    path("snapshots/<int:snapshot_id>/", views.snapshot_detail, name="snapshot-detail"),
    path(
        "snapshots/<int:snapshot_id>/files/<str:filename>",
        views.snapshot_download,
        name="snapshot-download",
    ),
]
