"""AI help with a project's labelling, from a shell (the project's "AI help" page does the same).

    python manage.py assist drafts --project "Toy QA" --checkpoint sft-1   # set it and draft now
    python manage.py assist votes --project "Toy QA" --checkpoint rm-1     # a reward model votes
    python manage.py assist votes --project 3 --checkpoint rm-1 --queue    # on a GPU worker

Without --queue the work runs in this process (the model is loaded here) and the command prints
what it did; with --queue it is recorded and sent to the GPU workers, as the page does.
"""

import contextlib

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from feedback.models import Project
from feedback.selectors import project_find
from jobs.services import sends_held
from modeling import selectors, services
from modeling.models import AssistKind, Checkpoint


class Command(BaseCommand):
    help = "Draft a project's demonstrations, or pre-vote its comparisons with a reward model."

    def add_arguments(self, parser):
        parser.add_argument("kind", choices=AssistKind.values)
        parser.add_argument("--project", required=True, help="Project name or id.")
        parser.add_argument(
            "--checkpoint",
            help="Checkpoint id or name. Drafts: becomes the project's drafting model "
            "(default: the one it names). Votes: the reward model that votes (required).",
        )
        parser.add_argument("--max-items", type=int, default=200)
        parser.add_argument("--queue", action="store_true", help="Send it to a GPU worker.")

    def handle(self, *args, kind: str, **options) -> None:
        try:
            project = project_find(reference=options["project"])
        except Project.DoesNotExist:
            raise CommandError(f"No project {options['project']!r}.") from None
        checkpoint = None
        if options["checkpoint"]:
            try:
                checkpoint = selectors.checkpoint_find(reference=options["checkpoint"])
            except Checkpoint.DoesNotExist:
                raise CommandError(f"No checkpoint {options['checkpoint']!r}.") from None
        # Run here: no message for the workers (the row is claimed below, in this process).
        sending = contextlib.nullcontext() if options["queue"] else sends_held()
        try:
            if kind == AssistKind.DRAFTS and checkpoint is not None:
                services.project_drafter_set(project=project, checkpoint=checkpoint, set_by=None)
            with sending:
                run = services.assist_request(
                    kind=kind,
                    project=project,
                    checkpoint=checkpoint,
                    max_items=options["max_items"],
                    requested_by=None,
                )
        except ValidationError as exc:
            raise CommandError("\n".join(exc.messages)) from exc
        if options["queue"]:
            self.stdout.write(f"{run.get_kind_display()} #{run.pk} is queued for a GPU worker.")
            return
        run = services.assist_run_run(run=run)
        if run.error:
            raise CommandError(f"{run.get_kind_display()} #{run.pk} failed: {run.error}")
        done = ", ".join(f"{n} {what}" for what, n in run.outcome.items())
        self.stdout.write(f"{run.get_kind_display()} #{run.pk} by {run.checkpoint.name}: {done}.")
