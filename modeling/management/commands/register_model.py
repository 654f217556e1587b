"""Register a base model, adapter or reward model that was trained elsewhere.

    python manage.py register_model var/models/tiny --name tiny --kind policy
    python manage.py register_model Qwen/Qwen2.5-0.5B-Instruct --hub --name qwen-0.5b
    python manage.py register_model var/models/tiny --name tiny-base --no-send   # `make run`

Nothing is loaded or downloaded: a directory is checked for the files transformers needs and
described (parameter count from the safetensors headers, size on disk); a hub id is only checked
for shape.
"""

import contextlib

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from jobs.services import sends_held
from modeling import selectors, services
from modeling.models import Checkpoint, CheckpointKind


class Command(BaseCommand):
    help = "Add an external model (a directory or a hub id) to the model registry."

    def add_arguments(self, parser):
        parser.add_argument("path", help="Model directory, or a hub id with --hub.")
        parser.add_argument("--name", required=True)
        parser.add_argument("--kind", default=CheckpointKind.POLICY, choices=CheckpointKind.values)
        parser.add_argument("--hub", action="store_true", help="PATH is a hub id.")
        parser.add_argument("--tokenizer", default="", help="Tokenizer directory, if separate.")
        parser.add_argument("--base", help="Registered checkpoint (id or name) an adapter sits on.")
        parser.add_argument("--notes", default="")
        parser.add_argument(
            "--if-missing", action="store_true", help="Do nothing if the name is taken."
        )
        parser.add_argument(
            "--no-send",
            action="store_true",
            help="Leave its automatic evaluations queued without sending them, for the sweep "
            "to send once the task queue is up (setup scripts that register before starting "
            "Redis, as `make run` does).",
        )

    def handle(self, *args, path: str, **options) -> None:
        existing = Checkpoint.objects.filter(name=options["name"]).first()
        if existing and options["if_missing"]:
            self.stdout.write(f"{existing.name} is already registered (#{existing.pk}).")
            return
        base = None
        if options["base"]:
            try:
                base = selectors.checkpoint_find(reference=options["base"])
            except Checkpoint.DoesNotExist:
                raise CommandError(f"--base: no checkpoint {options['base']!r}.") from None
        # Without Redis yet, each evaluation's send would fail and warn; held, they are sent by
        # Celery beat's sweep within seconds of its start, as a failed send would have been.
        held = sends_held() if options["no_send"] else contextlib.nullcontext()
        try:
            with held:
                checkpoint = services.checkpoint_register(
                    name=options["name"],
                    storage_path=path,
                    kind=options["kind"],
                    hub=options["hub"],
                    tokenizer_path=options["tokenizer"],
                    base_model=base,
                    notes=options["notes"],
                )
        except ValidationError as exc:
            raise CommandError("\n".join(exc.messages)) from exc
        params = checkpoint.parameter_count
        self.stdout.write(
            f"Registered {checkpoint.name} (#{checkpoint.pk}, {checkpoint.kind}"
            f"{f', {params:,} parameters' if params else ''}) at {checkpoint.storage_path}"
        )
        if options["no_send"]:
            self.stdout.write("Its automatic evaluations start once a worker runs.")
