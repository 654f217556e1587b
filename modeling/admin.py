from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError

from modeling import services
from modeling.models import Checkpoint, TrainingJob


class CheckpointRegisterForm(forms.ModelForm):
    """Adding a checkpoint in the admin registers an external model through the same service as
    `manage.py register_model`: the path is checked and described, never loaded."""

    hub = forms.BooleanField(required=False, help_text="storage path is a hub id, not a directory")

    class Meta:
        model = Checkpoint
        fields = ["name", "kind", "storage_path", "hub", "tokenizer_path", "base_model", "notes"]

    def clean(self):
        cleaned = super().clean()
        if cleaned.get("storage_path"):
            try:
                services.checkpoint_source_check(
                    storage_path=cleaned["storage_path"], hub=cleaned.get("hub")
                )
            except ValidationError as exc:
                self.add_error("storage_path", exc.message_dict["storage_path"])
        return cleaned


@admin.register(Checkpoint)
class CheckpointAdmin(admin.ModelAdmin):
    list_display = ["name", "kind", "source", "parent", "job", "parameter_count", "created_at"]
    list_filter = ["kind", "source", "is_adapter"]
    search_fields = ["name", "storage_path", "notes"]
    raw_id_fields = ["base_model", "parent", "job", "snapshot", "created_by"]
    # The facts come from the files and the lineage from the job: only the label is editable.
    readonly_fields = [
        "kind", "source", "storage_path", "tokenizer_path", "is_adapter", "base_model", "parent",
        "job", "snapshot", "parameter_count", "size_bytes", "train_tokens", "metrics",
        "created_by", "created_at",
    ]  # fmt: skip

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = CheckpointRegisterForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields if obj else []

    def get_fields(self, request, obj=None):
        if obj is None:
            return CheckpointRegisterForm.Meta.fields
        return ["name", "notes", *self.readonly_fields]

    def save_model(self, request, obj, form, change):
        if change:
            return super().save_model(request, obj, form, change)
        data = form.cleaned_data
        created = services.checkpoint_register(
            name=data["name"],
            storage_path=data["storage_path"],
            kind=data["kind"],
            hub=data["hub"],
            tokenizer_path=data["tokenizer_path"],
            base_model=data["base_model"],
            notes=data["notes"],
            registered_by=request.user,
        )
        obj.pk = created.pk
        obj.refresh_from_db()


@admin.register(TrainingJob)
class TrainingJobAdmin(admin.ModelAdmin):
    list_display = ["id", "kind", "status", "parent", "snapshot", "step", "total_steps",
                    "worker_host", "created_at"]  # fmt: skip
    list_filter = ["kind", "status"]
    search_fields = ["id", "worker_host", "error"]
    raw_id_fields = ["parent", "snapshot", "reward_model", "previous_attempt", "launched_by"]
    readonly_fields = [
        "step", "total_steps", "metrics", "metric_history", "log_tail", "worker_host",
        "heartbeat_at", "started_at", "finished_at", "output_dir", "resumed_from", "attempt",
    ]  # fmt: skip
    actions = ["cancel_jobs"]

    def has_add_permission(self, request):
        return False  # jobs are launched from the Training page or `manage.py launch_job`

    @admin.action(description="Cancel selected jobs")
    def cancel_jobs(self, request, queryset):
        for job in queryset:
            try:
                services.job_cancel(job=job, cancelled_by=request.user)
            except ValidationError as exc:
                self.message_user(request, exc.messages[0], messages.WARNING)
