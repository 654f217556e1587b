"""Optional: run an lm-evaluation-harness task on a local checkpoint, offline.

lm-eval is not a dependency of the app. Install it into the environment to use this
(`pip install lm-eval==0.4.13 -c constraints.txt`); without it run_lm_eval raises
LmEvalNotInstalled. Hub access is switched off for the call: a task runs only if its dataset is
in the local Hugging Face cache or is a local file (a task YAML with dataset_path: json and
local data_files, found through include_path).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

from evals.ml.lm import eval_device_dtype

LM_EVAL_VERSION = "0.4.13"


class LmEvalNotInstalled(ImportError):
    pass


def run_lm_eval(
    model_path: str | Path,
    task_name: str | list[str],
    *,
    include_path: str | Path | None = None,
    batch_size: int = 8,
    limit: int | float | None = None,
    num_fewshot: int | None = None,
    device: str | None = None,
    **kwargs: Any,
) -> dict:
    """lm_eval.simple_evaluate(model="hf", pretrained=model_path, tasks=[task_name]) offline.

    Returns lm-eval's results dict ("results", "versions", "n-shot", "config", ...). The model
    runs in bf16 on a GPU when there is one, else fp32 on CPU. include_path adds a directory of
    task YAML files; other keyword arguments go to simple_evaluate unchanged.
    """
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError as error:
        raise LmEvalNotInstalled(
            "run_lm_eval needs lm-evaluation-harness, which is not installed: "
            f"pip install lm-eval=={LM_EVAL_VERSION} -c constraints.txt"
        ) from error

    default_device, dtype = eval_device_dtype()
    tasks = [task_name] if isinstance(task_name, str) else list(task_name)
    task_manager = TaskManager(include_path=str(include_path) if include_path else None)
    with _hub_offline():
        return lm_eval.simple_evaluate(
            model="hf",
            model_args={
                "pretrained": str(model_path),
                "dtype": str(dtype).removeprefix("torch."),
            },
            tasks=tasks,
            task_manager=task_manager,
            batch_size=batch_size,
            limit=limit,
            num_fewshot=num_fewshot,
            device=device or default_device,
            **kwargs,
        )


@contextlib.contextmanager
def _hub_offline():
    """No downloads: huggingface_hub and datasets read these flags when imported, so set the
    environment for anything imported later and the already-imported constants too."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved_env = {name: os.environ.get(name) for name in names}
    patched: list[tuple[object, str, object]] = []
    os.environ.update(dict.fromkeys(names, "1"))
    try:
        import datasets.config
        import huggingface_hub.constants

        for module, attr in (
            (huggingface_hub.constants, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_DATASETS_OFFLINE"),
        ):
            if hasattr(module, attr):
                patched.append((module, attr, getattr(module, attr)))
                setattr(module, attr, True)
        yield
    finally:
        for module, attr, value in patched:
            setattr(module, attr, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
