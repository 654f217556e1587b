from django.core.management.base import BaseCommand, CommandError

from feedback.models import Project
from loop.simulation import SimulationConfig, simulate


class Command(BaseCommand):
    help = (
        "Work a project's queue with simulated annotators (marked 'simulated' everywhere and left "
        "out of snapshots unless asked)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--project", required=True, help="Project name or id.")
        parser.add_argument("--annotators", type=int, default=3)
        parser.add_argument("--max-tasks", type=int, default=None)
        parser.add_argument("--noise", type=float, default=0.1)
        parser.add_argument("--position-bias", type=float, default=0.0)
        parser.add_argument("--seconds", type=float, default=20.0, help="Median seconds per task.")
        parser.add_argument("--demonstration-error-rate", type=float, default=0.1)
        parser.add_argument("--seed", type=int, default=0)

    def handle(self, *args, **options) -> None:
        value = options["project"]
        project = Project.objects.filter(pk=int(value)).first() if value.isdigit() else None
        project = project or Project.objects.filter(name=value).first()
        if project is None:
            raise CommandError(f"No project {value!r}.")
        try:
            config = SimulationConfig(
                noise=options["noise"],
                position_bias=options["position_bias"],
                seconds=options["seconds"],
                demonstration_error_rate=options["demonstration_error_rate"],
                seed=options["seed"],
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        done = simulate(
            project=project,
            annotators=options["annotators"],
            max_tasks=options["max_tasks"],
            config=config,
        )
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(done.items())) or "nothing to do"
        self.stdout.write(f"Simulated annotators judged: {summary}.")
