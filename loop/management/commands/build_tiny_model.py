import shutil
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = (
        "Build the embedded tiny model (tokenizer + small Llama, briefly pretrained on CPU) "
        "once; skipped when it exists unless --force."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--output",
            default=str(Path(settings.VAR_DIR) / "models" / "tiny"),
            help="directory to write (default: var/models/tiny)",
        )
        parser.add_argument(
            "--steps", type=int, default=None, help="pretraining steps (more: a better demo model)"
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--force", action="store_true", help="rebuild even if it exists")

    def handle(self, *args, output: str, steps: int | None, seed: int, force: bool, **options):
        # Imported here: `manage.py help` and every other command should not load torch.
        from loop.tiny import DEFAULT_PRETRAIN_STEPS, build_tiny_model

        out = Path(output)
        if (out / "config.json").is_file() and not force:
            self.stdout.write(f"Tiny model exists at {out}; --force rebuilds it.")
            return
        self.stdout.write(f"Building the tiny model in {out} ...")
        # Build beside it and rename at the end: an interrupted build (Ctrl-C during the first
        # `make run`) must not leave a directory that the next run takes for a finished model.
        building = out.with_name(f".{out.name}.building")
        shutil.rmtree(building, ignore_errors=True)
        summary = build_tiny_model(
            str(building),
            pretrain_steps=DEFAULT_PRETRAIN_STEPS if steps is None else steps,
            seed=seed,
            progress=lambda step, steps, loss: self.stdout.write(
                f"  step {step}/{steps}, loss {loss:.2f}"
            ),
        )
        shutil.rmtree(out, ignore_errors=True)
        building.rename(out)
        self.stdout.write(
            self.style.SUCCESS(
                f"Built {out}: {summary['parameters'] / 1e6:.2f}M parameters, "
                f"vocabulary {summary['vocab_size']}, {summary['pretrain_steps']} steps "
                f"({summary['train_tokens']} tokens) in {summary['seconds']} s, "
                f"validation loss {summary['loss_before']} -> {summary['loss_after']}"
            )
        )
