"""Errors the annotation services raise; views turn them into form errors or 4xx responses."""

from django.core.exceptions import PermissionDenied, ValidationError


class TaskUnavailable(ValidationError):
    """The task can no longer be submitted (lease lost, skipped, project closed)."""


class NotYourTask(PermissionDenied):
    """Someone else's assignment, or a project this user may not work on."""


__all__ = ["NotYourTask", "PermissionDenied", "TaskUnavailable", "ValidationError"]
