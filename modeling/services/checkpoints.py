"""The model registry: registering base models and adapters, and describing what is on disk.

Registering never loads weights and never touches the network: a local directory is recognised by
the files transformers needs (`config.json`, or `adapter_config.json` for a LoRA adapter), its
parameter count is read from the safetensors headers (or from `veredicto.json`, which our own
trainers write), and a hub id is only checked for shape. Hosts with hub access load it later.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass
from math import prod
from pathlib import Path

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import transaction

from core.roles import require_admin
from modeling.models import Checkpoint, CheckpointKind, CheckpointSource, TrainingJob
from modeling.signals import checkpoint_registered

from .model_checks import pad_token_note

logger = logging.getLogger(__name__)

# `org/name` or a bare `name`, as the hub spells repository ids.
HUB_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$")
TRAINER_CHECKPOINT_PREFIX = "checkpoint-"  # Trainer's intermediate saves inside an output dir
VEREDICTO_MANIFEST = "veredicto.json"


@dataclass(frozen=True)
class CheckpointFacts:
    is_adapter: bool
    parameter_count: int | None
    size_bytes: int
    train_tokens: int | None
    base_model_name: str


def directory_size(path: Path) -> int:
    """Bytes of the model files, leaving out the trainer's intermediate `checkpoint-N` saves."""
    total = 0
    for entry in path.iterdir():
        if entry.is_dir():
            if not entry.name.startswith(TRAINER_CHECKPOINT_PREFIX):
                total += directory_size(entry)
        elif entry.is_file():
            total += entry.stat().st_size
    return total


def safetensors_parameter_count(path: Path) -> int | None:
    """Sum of tensor sizes declared in the safetensors headers (8-byte length + JSON header)."""
    files = sorted(path.glob("*.safetensors"))
    if not files:
        return None
    total = 0
    for file in files:
        with file.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            header = json.loads(handle.read(length))
        total += sum(prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    return total


def checkpoint_describe(*, path: Path) -> CheckpointFacts:
    """What a local checkpoint directory holds; ValidationError if transformers cannot load it."""
    if not path.is_dir():
        raise ValidationError({"storage_path": f"{path} is not a directory."})
    is_adapter = (path / "adapter_config.json").is_file()
    if not is_adapter and not (path / "config.json").is_file():
        raise ValidationError(
            {"storage_path": f"{path} has no config.json or adapter_config.json to load."}
        )
    manifest: dict = {}
    if (path / VEREDICTO_MANIFEST).is_file():
        manifest = json.loads((path / VEREDICTO_MANIFEST).read_text())
    base_name = manifest.get("base_model", "")
    if is_adapter and not base_name:
        adapter = json.loads((path / "adapter_config.json").read_text())
        base_name = adapter.get("base_model_name_or_path") or ""
    try:
        parameters = manifest.get("parameter_count") or safetensors_parameter_count(path)
    except (OSError, ValueError, KeyError, struct.error) as exc:
        raise ValidationError({"storage_path": f"Unreadable safetensors file: {exc}"}) from exc
    return CheckpointFacts(
        is_adapter=bool(manifest.get("lora", is_adapter)),
        parameter_count=parameters,
        size_bytes=directory_size(path),
        train_tokens=manifest.get("train_tokens"),
        base_model_name=str(base_name),
    )


def checkpoint_source_check(*, storage_path: str, hub: bool) -> tuple[str, CheckpointFacts | None]:
    """The normalised storage path (absolute for directories) and, for a directory, its facts."""
    storage_path = (storage_path or "").strip()
    if hub:
        if not HUB_ID.match(storage_path):
            raise ValidationError(
                {"storage_path": f"{storage_path!r} is not a hub id like org/model."}
            )
        return storage_path, None
    path = Path(storage_path).expanduser()
    if not path.is_absolute():
        path = Path.cwd() / path
    path = path.resolve()
    return str(path), checkpoint_describe(path=path)


def checkpoint_register(
    *,
    name: str,
    storage_path: str,
    kind: str = CheckpointKind.POLICY,
    hub: bool = False,
    tokenizer_path: str = "",
    base_model: Checkpoint | None = None,
    notes: str = "",
    registered_by: AbstractBaseUser | None = None,
    evaluate: bool | None = None,
) -> Checkpoint:
    """Add an external model to the registry: a directory transformers loads, or a hub id.

    A registered model has no parent and no job; `base_model` links a LoRA adapter to the
    registered checkpoint it sits on. A tokenizer without a pad token distinct from EOS gets one
    by the loading rule (the notes say which), or the model is refused if there is none to pick.
    Once committed it is announced like a trained checkpoint, so its default evaluations run
    (`evaluate`, default VEREDICTO_EVALUATE_REGISTERED, says whether).
    """
    require_admin(registered_by, "register models")
    name = (name or "").strip()
    errors: dict[str, str] = {}
    if not name:
        errors["name"] = "Give the model a name."
    elif len(name) > 200:
        errors["name"] = "Names are at most 200 characters."
    elif Checkpoint.objects.filter(name=name).exists():
        errors["name"] = f"A checkpoint named {name!r} exists."
    if kind not in CheckpointKind.values:
        errors["kind"] = f"Kind is one of {', '.join(CheckpointKind.values)}."
    facts = None
    try:
        storage_path, facts = checkpoint_source_check(storage_path=storage_path, hub=hub)
    except ValidationError as exc:
        errors.update({k: v[0] for k, v in exc.message_dict.items()})
    if tokenizer_path and not hub and not Path(tokenizer_path).is_dir():
        errors["tokenizer_path"] = f"{tokenizer_path} is not a directory."
    if facts and not errors:
        try:
            pad_note = pad_token_note(storage_path=storage_path, tokenizer_path=tokenizer_path)
        except ValueError as exc:
            errors["storage_path"] = str(exc)
        else:
            notes = "\n".join(part for part in (notes, pad_note) if part)
    if errors:
        raise ValidationError(errors)
    checkpoint = Checkpoint.objects.create(
        name=name,
        kind=kind,
        source=CheckpointSource.HUB if hub else CheckpointSource.LOCAL,
        storage_path=storage_path,
        tokenizer_path=tokenizer_path,
        is_adapter=facts.is_adapter if facts else False,
        base_model=base_model.root() if base_model else None,
        parameter_count=facts.parameter_count if facts else None,
        size_bytes=facts.size_bytes if facts else None,
        train_tokens=facts.train_tokens if facts else None,
        notes=notes,
        created_by=registered_by,
    )
    if settings.VEREDICTO_EVALUATE_REGISTERED if evaluate is None else evaluate:
        transaction.on_commit(lambda: checkpoint_announce(checkpoint=checkpoint))
    return checkpoint


def checkpoint_announce(*, checkpoint: Checkpoint, job: TrainingJob | None = None) -> None:
    """Tell whoever listens (evals schedules its default suites). The checkpoint already
    exists: a listener's problem is logged, never turned into a failed job or registration."""
    for receiver, result in checkpoint_registered.send_robust(
        sender=Checkpoint, checkpoint=checkpoint, job=job
    ):
        if isinstance(result, Exception):
            logger.error("%s failed for checkpoint %s", receiver, checkpoint.pk, exc_info=result)


def unique_checkpoint_name(*, stem: str) -> str:
    name, n = stem[:190], 1
    while Checkpoint.objects.filter(name=name).exists():
        n += 1
        name = f"{stem[:190]}-{n}"
    return name
