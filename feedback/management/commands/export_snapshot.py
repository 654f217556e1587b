import json

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from feedback.management.commands.import_data import _project
from feedback.models import SnapshotKind
from feedback.services import snapshot_create


class Command(BaseCommand):
    help = (
        "Build a dataset snapshot now, with the same policy options as the data page and the API "
        "(feedback/services/snapshots/ documents them), and print where its files are."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name or id.")
        parser.add_argument("--kind", required=True, choices=SnapshotKind.values)
        parser.add_argument("--name", default="")
        parser.add_argument(
            "--policy",
            default="{}",
            help='JSON object, e.g. \'{"min_gold_accuracy": 0.8, "exclude_flagged": true}\'.',
        )

    def handle(self, *args, **options) -> None:
        project = _project(options["project"])
        try:
            policy = json.loads(options["policy"])
        except json.JSONDecodeError as exc:
            raise CommandError(f"--policy is not JSON: {exc}") from exc
        try:
            snapshot = snapshot_create(
                project=project, kind=options["kind"], name=options["name"], policy=policy
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        if not snapshot.is_ready:
            raise CommandError(f"Snapshot #{snapshot.pk} {snapshot.status}: {snapshot.error}")
        stats = snapshot.stats
        excluded = ", ".join(a["username"] for a in stats.get("excluded_annotators", []))
        dropped = ", ".join(f"{n} {what}" for what, n in stats.get("dropped", {}).items() if n)
        self.stdout.write(
            f"Snapshot #{snapshot.pk} {snapshot.content_hash[:12]}: "
            f"{snapshot.row_counts['train']} train / {snapshot.row_counts['test']} test rows in "
            f"{snapshot.path()}\n"
            f"Left out: {dropped or 'nothing'}; annotators left out: {excluded or 'none'}."
        )
