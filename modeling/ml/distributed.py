"""Spreading one training job over several processes (one per device) with `accelerate launch`.

A job config's `distributed` says how: {"strategy": "ddp", "processes": 4}. The project ships one
accelerate config per strategy (modeling/accelerate/*.yaml); jobs/backends/local.py launches the
job's entry point with it. Plain pydantic and arithmetic: the web process validates with it.

The effective batch the user asked for (batch_size x gradient_accumulation_steps, as if on one
device) is kept: with N processes each accumulates 1/N as many micro-batches, or, when the
accumulation does not divide, each takes 1/N of the micro-batch. Accelerate gives process i the
i-th of every N consecutive micro-batches, so N processes see exactly the batches one process
would have accumulated, and DDP's gradient average equals the accumulated mean.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, PositiveInt, model_validator

ACCELERATE_CONFIGS = Path(__file__).resolve().parent.parent / "accelerate"
Strategy = Literal["none", "ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3"]


class DistributedConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    strategy: Strategy = "none"
    processes: PositiveInt = 1  # one per device; a worker must own at least this many

    @model_validator(mode="after")
    def _one_process_without_a_strategy(self) -> DistributedConfig:
        if self.strategy == "none" and self.processes > 1:
            raise ValueError("several processes need a strategy: ddp, fsdp or deepspeed_zero2/3")
        return self

    @property
    def launches_several(self) -> bool:
        return self.strategy != "none"

    def accelerate_config(self) -> Path:
        return ACCELERATE_CONFIGS / f"{self.strategy}.yaml"


def per_process_batch(
    *, batch_size: int, gradient_accumulation_steps: int, processes: int
) -> tuple[int, int]:
    """(per-device batch, accumulation steps) that keep batch x accumulation x processes equal to
    the single-device effective batch; ValueError when it cannot be split evenly."""
    if processes == 1:
        return batch_size, gradient_accumulation_steps
    if gradient_accumulation_steps % processes == 0:
        return batch_size, gradient_accumulation_steps // processes
    if batch_size % processes == 0 and gradient_accumulation_steps == 1:
        return batch_size // processes, 1
    effective = batch_size * gradient_accumulation_steps
    raise ValueError(
        f"the effective batch ({batch_size} x {gradient_accumulation_steps} = {effective}) cannot "
        f"be split evenly over {processes} processes: make gradient_accumulation_steps a multiple "
        f"of {processes}, or batch_size a multiple of {processes} with no accumulation"
    )
