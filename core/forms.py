"""Form plumbing every app's views share."""

from __future__ import annotations

from django import forms
from django.core.exceptions import ValidationError


def add_service_errors(form: forms.Form, exc: ValidationError, *, field_prefix: str = "") -> None:
    """Put a service's ValidationError next to the inputs it names. An error that carries
    `field_errors` (a job config's, say: {"lora.r": [...]}) names nested fields; they go to the
    form field `field_prefix + <first part>` when the form has one."""
    field_errors = getattr(exc, "field_errors", None)
    if field_errors is not None:
        for field, messages in field_errors.items():
            name = field_prefix + field.split(".")[0]
            form.add_error(name if name in form.fields else None, messages)
        return
    if not hasattr(exc, "error_dict"):
        form.add_error(None, exc)
        return
    for field, messages in exc.message_dict.items():
        form.add_error(field if field in form.fields else None, messages)
