from django.contrib import admin

from feedback.models import (
    Assignment,
    Completion,
    DataImport,
    DatasetSnapshot,
    Demonstration,
    Item,
    ItemCompletion,
    JudgementRevision,
    PairwiseJudgement,
    Project,
    Prompt,
    RankingJudgement,
)


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "overlap", "lease_seconds", "is_active", "created_at"]
    list_filter = ["is_active"]
    search_fields = ["name", "description"]
    filter_horizontal = ["annotators"]


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "preview", "split", "source", "created_at"]
    list_filter = ["project", "split", "source"]
    search_fields = ["external_id", "content_hash", "messages"]
    readonly_fields = ["content_hash"]


@admin.register(Completion)
class CompletionAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "source", "model_name", "created_at"]
    list_filter = ["source", "model_name", "prompt__project"]
    search_fields = ["text", "model_name"]
    raw_id_fields = ["prompt", "author"]


class ItemCompletionInline(admin.TabularInline):
    model = ItemCompletion
    raw_id_fields = ["completion"]
    extra = 0


class AssignmentInline(admin.TabularInline):
    model = Assignment
    fields = ["annotator", "status", "leased_at", "expires_at", "finished_at", "skip_reason"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Item)
class ItemAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "submitted_count", "created_at"]
    list_filter = ["project", "kind"]
    search_fields = ["prompt__messages"]
    raw_id_fields = ["prompt"]
    inlines = [ItemCompletionInline, AssignmentInline]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "item", "annotator", "status", "leased_at", "expires_at", "finished_at"]
    list_filter = ["status", "item__project", "item__kind"]
    search_fields = ["annotator__username", "skip_reason"]
    raw_id_fields = ["item", "annotator"]


class JudgementAdmin(admin.ModelAdmin):
    list_filter = ["item__project", "created_at"]
    search_fields = ["annotator__username"]
    raw_id_fields = ["assignment", "item", "annotator"]


@admin.register(Demonstration)
class DemonstrationAdmin(JudgementAdmin):
    list_display = ["id", "item", "annotator", "status", "seconds_spent", "created_at"]
    list_filter = ["status", *JudgementAdmin.list_filter]
    search_fields = [*JudgementAdmin.search_fields, "text"]


@admin.register(PairwiseJudgement)
class PairwiseJudgementAdmin(JudgementAdmin):
    list_display = ["id", "item", "annotator", "choice", "strength", "shown_left", "created_at"]
    list_filter = ["choice", "strength", "shown_left", *JudgementAdmin.list_filter]


@admin.register(RankingJudgement)
class RankingJudgementAdmin(JudgementAdmin):
    list_display = ["id", "item", "annotator", "ranking", "created_at"]


@admin.register(JudgementRevision)
class JudgementRevisionAdmin(admin.ModelAdmin):
    list_display = ["id", "assignment", "edited_by", "created_at"]
    list_filter = ["created_at"]
    search_fields = ["edited_by__username"]
    raw_id_fields = ["assignment", "edited_by"]


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
    list_display = ["id", "name", "project", "kind", "status", "row_counts", "created_at"]
    list_filter = ["kind", "status", "project"]
    search_fields = ["name", "content_hash"]
    # Snapshots are immutable: their rows describe files already written.
    readonly_fields = [f.name for f in DatasetSnapshot._meta.fields]


@admin.register(DataImport)
class DataImportAdmin(admin.ModelAdmin):
    list_display = ["id", "original_name", "project", "status", "rows_done", "created_at"]
    list_filter = ["status", "project"]
    search_fields = ["original_name"]
    readonly_fields = [f.name for f in DataImport._meta.fields]
