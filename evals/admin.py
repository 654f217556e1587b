from django.contrib import admin

from evals.models import EvalResult, EvalRun, EvalSample


class EvalResultInline(admin.TabularInline):
    model = EvalResult
    extra = 0
    can_delete = False
    readonly_fields = ["metric", "value", "stderr", "ci_low", "ci_high", "n"]

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(EvalRun)
class EvalRunAdmin(admin.ModelAdmin):
    list_display = ["id", "checkpoint", "suite", "task", "status", "worker_host", "created_at"]
    list_filter = ["suite", "status"]
    search_fields = ["checkpoint__name", "task", "error"]
    raw_id_fields = [
        "checkpoint",
        "reference",
        "judge",
        "snapshot",
        "created_by",
        "triggered_by_job",
    ]
    inlines = [EvalResultInline]
    # Runs are records of what happened: launch and re-run them from the dashboard instead.
    readonly_fields = [
        "checkpoint", "suite", "task", "params", "reference", "judge", "snapshot", "status",
        "worker_host", "heartbeat_at", "error", "summary", "created_by", "triggered_by_job",
        "created_at", "started_at", "finished_at",
    ]  # fmt: skip

    def has_add_permission(self, request):
        return False


@admin.register(EvalSample)
class EvalSampleAdmin(admin.ModelAdmin):
    list_display = ["run", "position", "correct"]
    raw_id_fields = ["run"]
    readonly_fields = [
        "run",
        "position",
        "prompt",
        "output",
        "target",
        "correct",
        "reference_output",
    ]

    def has_add_permission(self, request):
        return False
