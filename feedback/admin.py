from django.contrib import admin, messages

from feedback.models import (
    Adjudication,
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
    Review,
)
from feedback.services import records as records_services


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["name", "overlap", "lease_seconds", "is_active", "reveal_models", "created_at"]
    list_filter = ["is_active", "reveal_models"]
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
    list_display = ["id", "project", "kind", "submitted_count", "priority", "is_gold", "created_at"]
    list_filter = ["project", "kind", "is_gold"]
    search_fields = ["prompt__messages"]
    raw_id_fields = ["prompt"]
    readonly_fields = ["is_gold", "gold_answer"]
    inlines = [ItemCompletionInline, AssignmentInline]
    actions = ["mark_gold_from_labels"]

    @admin.action(description="Mark as gold, using the adjudicated or unanimous answer")
    def mark_gold_from_labels(self, request, queryset):
        marked, skipped = 0, 0
        for project in Project.objects.filter(items__in=queryset).distinct():
            done, missed = records_services.items_mark_gold(
                project=project,
                item_ids=list(queryset.filter(project=project).values_list("pk", flat=True)),
                admin=request.user,
            )
            marked, skipped = marked + done, skipped + missed
        self.message_user(request, f"Marked {marked} gold; {skipped} had no agreed answer.",
                          messages.SUCCESS if marked else messages.WARNING)  # fmt: skip


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


@admin.register(Review)
class ReviewAdmin(admin.ModelAdmin):
    list_display = ["id", "assignment", "reviewer", "decision", "created_at"]
    list_filter = ["decision", "assignment__item__project"]
    search_fields = ["reviewer__username", "comment"]
    raw_id_fields = ["assignment", "reviewer"]


@admin.register(Adjudication)
class AdjudicationAdmin(admin.ModelAdmin):
    list_display = ["id", "item", "adjudicator", "choice", "created_at"]
    list_filter = ["choice", "item__project"]
    raw_id_fields = ["item", "adjudicator"]
