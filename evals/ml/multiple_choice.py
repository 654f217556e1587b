"""Multiple-choice benchmarks scored by log-likelihood, as lm-evaluation-harness scores them.

    from evals.ml import evaluate_mc, load_mc_task, shipped_tasks
    evaluate_mc(model, tokenizer, load_mc_task(shipped_tasks()["arithmetic_mc"]))

Definition (MULTIPLE_CHOICE_DEFINITION): lm-eval's ConfigurableTask with output_type
multiple_choice. Each choice becomes the request (prompt, target_delimiter + choice), tokenized
by lm-eval's _encode_pair, and is scored by the log-likelihood of its tokens. acc = argmax(ll)
is the answer; acc_norm = argmax(ll / len(choice)) is the answer (length in characters of the
choice without the delimiter); the first maximum wins ties, as np.argmax does. Standard errors:
lm_eval.api.metrics.mean_stderr.
"""

from __future__ import annotations

import numpy as np
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evals.ml.definitions import MULTIPLE_CHOICE_DEFINITION
from evals.ml.lm import encode_pair, loglikelihood_tokens, resolve_max_length
from evals.ml.stats import mean_stderr
from evals.ml.tasks import MCTask

__all__ = ["MULTIPLE_CHOICE_DEFINITION", "evaluate_mc", "mc_prompt"]


def mc_prompt(tokenizer: PreTrainedTokenizerBase, task: MCTask, prompt: str) -> str:
    """The context string a choice is appended to: the prompt, or for chat tasks the prompt as
    one user message rendered by the chat template up to where the assistant's reply starts."""
    if not task.chat:
        return prompt
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def evaluate_mc(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: MCTask,
    *,
    batch_size: int | None = None,
    limit: int | None = None,
    max_length: int | None = None,
) -> dict:
    """acc, acc_norm and their standard errors over the task's first `limit` items (all by
    default). Returns {"acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n"}. batch_size:
    rows per forward pass (None: loglikelihood_tokens' default for the model's device)."""
    items = task.items[:limit] if limit is not None else task.items
    if not items:
        raise ValueError("No items to evaluate")
    max_length = max_length or resolve_max_length(model, tokenizer)
    requests = []
    for item in items:
        context = mc_prompt(tokenizer, task, item.prompt)
        requests += [
            encode_pair(tokenizer, context, f"{task.target_delimiter}{choice}")
            for choice in item.choices
        ]
    scores = loglikelihood_tokens(model, requests, max_length=max_length, batch_size=batch_size)

    acc, acc_norm = [], []
    position = 0
    for item in items:
        lls = np.array(scores[position : position + len(item.choices)])
        position += len(item.choices)
        lengths = np.array([float(len(choice)) for choice in item.choices])
        acc.append(1.0 if int(np.argmax(lls)) == item.answer else 0.0)
        acc_norm.append(1.0 if int(np.argmax(lls / lengths)) == item.answer else 0.0)
    return {
        "acc": sum(acc) / len(acc),
        "acc_stderr": mean_stderr(acc),
        "acc_norm": sum(acc_norm) / len(acc_norm),
        "acc_norm_stderr": mean_stderr(acc_norm),
        "n": len(items),
    }
