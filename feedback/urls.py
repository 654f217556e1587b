from django.urls import path

from . import views

urlpatterns = [
    path("", views.home, name="home"),
    path("projects/<int:project_id>/work/", views.work, name="work"),
    path("projects/<int:project_id>/progress/", views.progress, name="progress"),
    path("tasks/<int:assignment_id>/", views.task, name="task"),
    path("tasks/<int:assignment_id>/submit/", views.submit, name="submit"),
    path("tasks/<int:assignment_id>/skip/", views.skip, name="skip"),
    path("history/", views.history, name="history"),
    path("markdown/preview/", views.markdown_preview, name="markdown-preview"),
]
