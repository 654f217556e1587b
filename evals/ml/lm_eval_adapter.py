"""Optional: run an lm-evaluation-harness task on a local checkpoint, offline.

lm-eval is not a dependency of the app. Install it into the environment to use this
(`pip install lm-eval==0.4.13 -c constraints.txt`); without it run_lm_eval raises
LmEvalNotInstalled. Hub access is switched off for the call: a task runs only if its dataset is
in the local Hugging Face cache or is a local file (a task YAML with dataset_path: json and
local data_files, found through include_path).

Every shipped multiple-choice task is also an lm-eval task, "veredicto_" + its name
(veredicto_arithmetic_mc, ...): run_lm_eval writes its YAML and data file into a temporary
directory (data_files must be absolute paths, and the checkout's place differs between hosts) and
adds that directory to include_path. These use lm-eval's plain prompt format (the item's prompt,
a space, the choice; no chat template), so their acc is lm-eval's number on our items, not a
copy of the multiple_choice suite's chat-formatted one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from evals.ml.tasks import load_mc_task, shipped_tasks, task_kind

LM_EVAL_VERSION = "0.4.13"
SHIPPED_PREFIX = "veredicto_"


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

    from evals.ml.lm import eval_device_dtype  # torch: only where a model is run

    default_device, dtype = eval_device_dtype()
    tasks = [task_name] if isinstance(task_name, str) else list(task_name)
    with tempfile.TemporaryDirectory(prefix="veredicto-lm-eval-") as shipped, _hub_offline():
        write_shipped_lm_eval_tasks(shipped)
        # The user's folder last: lm-eval lets a later path override an earlier one's task.
        paths = [shipped, *([str(include_path)] if include_path else [])]
        task_manager = TaskManager(include_path=paths)
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


def shipped_lm_eval_task_names() -> list[str]:
    """The lm-eval names of the shipped multiple-choice tasks (no lm-eval import needed)."""
    return sorted(
        SHIPPED_PREFIX + name
        for name, path in shipped_tasks().items()
        if task_kind(path) == "multiple_choice"
    )


def write_shipped_lm_eval_tasks(directory: str | Path) -> list[str]:
    """Write an lm-eval task YAML and a JSONL data file per shipped multiple-choice task into
    `directory`; returns the task names. The YAML is written as JSON, which YAML reads as is."""
    directory = Path(directory)
    names = []
    for name, path in sorted(shipped_tasks().items()):
        if task_kind(path) != "multiple_choice":
            continue
        task = load_mc_task(path)
        task_name = SHIPPED_PREFIX + name
        data = directory / f"{task_name}.jsonl"
        data.write_text(
            "".join(
                json.dumps({"prompt": i.prompt, "choices": i.choices, "answer": i.answer}) + "\n"
                for i in task.items
            ),
            encoding="utf-8",
        )
        config = {
            "task": task_name,
            "dataset_path": "json",
            "dataset_kwargs": {"data_files": {"test": str(data.resolve())}},
            "test_split": "test",
            "output_type": "multiple_choice",
            "doc_to_text": "prompt",
            "doc_to_choice": "choices",
            "doc_to_target": "answer",
            "target_delimiter": " ",
            "metric_list": [
                {"metric": metric, "aggregation": "mean", "higher_is_better": True}
                for metric in ("acc", "acc_norm")
            ],
            "metadata": {"version": 1.0, "description": task.description},
        }
        (directory / f"{task_name}.yaml").write_text(json.dumps(config, indent=1) + "\n")
        names.append(task_name)
    return names


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
