"""Two simulated rounds of the whole loop on the toy tasks, in this process (loop/demo/).

    python manage.py demo_loop [--scale demo|ci] [--base-model DIR] [--seed S]

`make demo` runs it and then starts the app on the result. Training jobs and evaluations run here,
synchronously (no Redis or worker needed); they are the same rows, services and checkpoints the
app shows.
"""

from django.core.management.base import BaseCommand, CommandError

from loop.demo import SCALES


class Command(BaseCommand):
    help = "Run one simulated round of the feedback loop on the toy tasks (make demo)."

    def add_arguments(self, parser):
        parser.add_argument("--scale", choices=sorted(SCALES), default="demo")
        parser.add_argument(
            "--base-model",
            help="Model directory to start from (default: var/models/tiny-demo-<key>, built when "
            "missing).",
        )
        parser.add_argument(
            "--seed",
            type=int,
            default=0,
            help="Seed of the simulated annotators, the sampling and the training jobs.",
        )

    def handle(self, *args, scale: str, base_model: str | None, seed: int, **options) -> None:
        # Imported here: `manage.py help` must not load torch.
        from loop.demo import run_demo_loop

        def out(line: str) -> None:
            self.stdout.write(line)
            self.stdout.flush()

        try:
            run_demo_loop(scale=scale, out=out, base_model_path=base_model, seed=seed)
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
