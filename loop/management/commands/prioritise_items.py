from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from feedback.management.commands.import_data import _project
from loop.active import Strategy, items_prioritise
from modeling.models import Checkpoint


class Command(BaseCommand):
    help = (
        "Order a project's waiting pairwise items for annotators by what an ensemble of reward "
        "models is least sure of (active sampling), or back to first come, first served."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name or id.")
        parser.add_argument(
            "--strategy", choices=Strategy.values, default=Strategy.DISAGREEMENT.value
        )
        parser.add_argument(
            "--reward-models",
            nargs="*",
            default=[],
            metavar="CHECKPOINT",
            help="Names or ids of two or more reward checkpoints trained with different seeds.",
        )

    def handle(self, *args, **options) -> None:
        project = _project(options["project"])
        members = [_checkpoint(value) for value in options["reward_models"]]
        try:
            outcome = items_prioritise(
                project=project, reward_models=members, strategy=options["strategy"]
            )
        except ValidationError as exc:
            raise CommandError(" ".join(m for ms in exc.message_dict.values() for m in ms)) from exc
        self.stdout.write(
            f"Prioritised {outcome.items} waiting pairwise items of {project.name!r} by "
            f"{outcome.strategy} ({outcome.members} reward models; top priority {outcome.top:.4f})."
        )


def _checkpoint(value: str) -> Checkpoint:
    found = Checkpoint.objects.filter(pk=int(value)).first() if value.isdigit() else None
    found = found or Checkpoint.objects.filter(name=value).first()
    if found is None:
        raise CommandError(f"No checkpoint {value!r}.")
    return found
