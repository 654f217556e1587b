"""Test support: the project's tiny model, built once per process for the evaluation tests.

modeling.ml.build_tiny_model makes the real thing (byte-level BPE tokenizer with the chat
template, Llama architecture); with pretrain_steps=0 it takes a few seconds. Tests need exact
arithmetic, not a good model, so the weights stay at their seeded random initialisation.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import shutil
import tempfile
from pathlib import Path


@functools.cache
def tiny_model_dir() -> Path:
    from loop.tiny import build_tiny_model

    directory = Path(tempfile.mkdtemp(prefix="veredicto-evals-tiny-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    build_tiny_model(str(directory), pretrain_steps=0, seed=0)
    return directory


def tiny_lm(dtype=None):
    """(model, tokenizer): a fresh copy of the tiny causal LM, in eval mode, on CPU."""
    import torch

    from modeling.ml import load_causal_lm, load_tokenizer

    path = tiny_model_dir()
    model = load_causal_lm(path, dtype=dtype or torch.float32).eval()
    return model, load_tokenizer(path)


def tiny_reward_model():
    """(model, tokenizer): the tiny LM with a seeded random scalar head, as a reward model."""
    import torch

    from modeling.ml import load_reward_model, load_tokenizer

    path = tiny_model_dir()
    torch.manual_seed(0)  # the score head is newly initialised on load
    return load_reward_model(path).eval(), load_tokenizer(path)


@contextlib.contextmanager
def torch_threads(n: int):
    """Run with n intra-op threads, then restore. The tiny model's matrices are too small to
    share between threads: on a busy 2-core machine two threads spin against each other and
    run several times slower than one."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
