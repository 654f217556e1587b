import sys
from pathlib import Path

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from feedback.models import Project
from feedback.selectors import project_find
from feedback.services import ImportOptions, import_file
from feedback.services.imports import PAIRINGS, SHAPES


class Command(BaseCommand):
    help = "Import prompts, comparisons, preference pairs or SFT data from JSONL/CSV/Parquet/HF."

    def add_arguments(self, parser):
        parser.add_argument("path", type=Path)
        parser.add_argument("--project", required=True, help="Project name or id.")
        parser.add_argument("--shape", default="auto", choices=["auto", *SHAPES])
        parser.add_argument(
            "--comparison-mode", default="pairwise", choices=["pairwise", "ranking"]
        )
        parser.add_argument("--pairing", default="all_pairs", choices=PAIRINGS)
        parser.add_argument(
            "--source", default="", help="Recorded on every row (default: file name)."
        )

    def handle(self, *args, path: Path, **options) -> None:
        project = _project(options["project"])
        if not path.exists():
            raise CommandError(f"No such file: {path}")
        try:
            opts = ImportOptions(
                shape=options["shape"],
                comparison_mode=options["comparison_mode"],
                pairing=options["pairing"],
                source=options["source"],
            )
            report = import_file(project=project, path=path, options=opts, progress=self._progress)
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from exc
        sys.stderr.write("\n")
        if not report.ok:
            for error in report.errors:
                self.stderr.write(f"row {error['row']}: {error['message']}")
            more = report.error_count - len(report.errors)
            raise CommandError(
                f"{report.error_count} invalid row(s){f' ({more} not listed)' if more else ''}; "
                "nothing was imported."
            )
        created = ", ".join(f"{n} {what}" for what, n in report.created.items())
        self.stdout.write(
            f"Imported {report.rows} rows ({created}); {report.skipped_duplicates} already present."
        )

    def _progress(self, phase: str, rows: int) -> None:
        sys.stderr.write(f"\r{phase}: {rows:,} rows")
        sys.stderr.flush()


def _project(value: str) -> Project:
    try:
        return project_find(reference=value)
    except Project.DoesNotExist:
        raise CommandError(f"No project {value!r}.") from None
