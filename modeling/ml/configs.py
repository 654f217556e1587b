"""Job configs: one small validated model per training kind, stored as JSON on the job row.

Unknown keys are an error (extra="forbid"): a typo such as "learning_rat" must fail when the job
is created, not train silently with the default. Field names are ours and short; training.py maps
them onto TRL's config classes (SFTConfig, RewardConfig, DPOConfig, PPOConfig, RLOOConfig,
GRPOConfig). Defaults follow TRL's where they suit both a real model and the tiny demo model;
where they differ, the comment says why.
"""

import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from modeling.ml.distributed import DistributedConfig
from modeling.ml.rewards import DEFAULT_FORMAT_PATTERN, registered_rewards

PositiveInt = Annotated[int, Field(ge=1)]


class JobConfig(BaseModel):
    """What every kind shares: optimisation, batch shape, LoRA, seed, precision, checkpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    learning_rate: float = Field(gt=0, le=1)
    epochs: float = Field(1.0, gt=0, le=1000)
    # When set, max_steps wins over epochs (as in transformers.TrainingArguments).
    max_steps: PositiveInt | None = None
    batch_size: PositiveInt = 8  # per device
    gradient_accumulation_steps: PositiveInt = 1
    seed: int = Field(0, ge=0)
    # "auto": bf16 mixed precision on a GPU that supports it, else fp32. CPU runs are fp32 only.
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    # Trades compute for memory on GPU; always off on CPU, where memory is not the limit.
    gradient_checkpointing: bool = False
    # Write a resumable trainer checkpoint every N optimizer steps, so that re-running a failed or
    # cancelled job resumes from the last one (None: none written, a re-run starts over). On by
    # default because a long job is exactly the one that must not start over; 200 steps is a few
    # minutes of a real run, and a short run (the demo's) finishes before its first save.
    save_steps: PositiveInt | None = 200
    # Checkpoints kept: each holds the optimizer state (about three times the model in fp32), and
    # resuming needs only the last; the one before it covers a crash while the last is written.
    save_total_limit: PositiveInt = 2
    # Passed to transformers as is: "none", "tensorboard", "wandb", ... (installed separately).
    report_to: str | list[str] = "none"
    # Several devices: {"strategy": "ddp" | "fsdp" | "deepspeed_zero2" | "deepspeed_zero3",
    # "processes": N}. The effective batch above is kept (modeling/ml/distributed.py).
    distributed: DistributedConfig = DistributedConfig()

    lora: bool = False
    lora_rank: PositiveInt = 16
    lora_alpha: PositiveInt = 32
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    # "all-linear" targets every linear layer but the output head (PEFT's shorthand).
    lora_targets: str | list[str] = "all-linear"
    # QLoRA (Dettmers et al. 2023): the frozen base loaded in 4-bit NF4 through bitsandbytes,
    # computing in bf16, with LoRA adapters trained on top. GPU workers with bitsandbytes only
    # (`pip install ".[gpu]"`); launch refuses it where the deployment says they have none.
    quantization: Literal["none", "4bit"] = "none"

    # The learning-rate schedule, passed to transformers as is. Warm up for a number of
    # optimizer steps or a fraction of them (one or the other, not both).
    warmup_steps: int = Field(0, ge=0)
    warmup_ratio: float = Field(0.0, ge=0, lt=1)
    lr_scheduler_type: Literal[
        "linear", "cosine", "cosine_with_min_lr", "constant", "constant_with_warmup"
    ] = "linear"
    weight_decay: float = Field(0.0, ge=0, le=1)
    max_grad_norm: float = Field(1.0, gt=0)
    # Evaluate on the snapshot's test split every N optimizer steps while training (kinds with a
    # test split: sft, reward, dpo); None: only once, after training.
    eval_steps: PositiveInt | None = None

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps

    @model_validator(mode="after")
    def _one_warmup(self):
        if self.warmup_steps and self.warmup_ratio:
            raise ValueError("warmup_steps and warmup_ratio exclude each other: set one")
        return self

    @model_validator(mode="after")
    def _quantized_base_trains_adapters(self):
        # A 4-bit base cannot take gradient updates itself: only adapters on top of it train.
        if self.quantization != "none" and not self.lora:
            raise ValueError("quantization '4bit' (QLoRA) trains LoRA adapters: set lora to true")
        return self


class SFTJobConfig(JobConfig):
    learning_rate: float = Field(2e-5, gt=0, le=1)
    max_length: PositiveInt = 1024  # tokens per conversation; longer ones are truncated
    # Train on the assistant's tokens only (the template's {% generation %} markers), not on
    # the user's: the model should learn to answer, not to write prompts.
    assistant_only_loss: bool = True
    # The fallback where the template marks no assistant tokens (launch sets it, and says so on
    # the job): each conversation split into prompt and last reply, the loss on the reply only.
    completion_only_loss: bool = False
    # Packing: conversations are concatenated into rows of max_length tokens (TRL's best-fit
    # decreasing packing, each conversation kept whole where it fits) and batched padding-free:
    # no pad tokens are computed. Position ids restart at each conversation, and attention stays
    # within it (flash-attention reads the boundaries from them; transformers' sdpa and eager
    # attention build the block-diagonal mask from them). The loss masks above still apply.
    packing: bool = False

    @model_validator(mode="after")
    def _one_loss_mask(self):
        if self.assistant_only_loss and self.completion_only_loss:
            raise ValueError("assistant_only_loss and completion_only_loss exclude each other")
        return self


class RewardJobConfig(JobConfig):
    learning_rate: float = Field(1e-4, gt=0, le=1)
    max_length: PositiveInt = 1024  # prompt + completion; longer pairs are dropped by TRL
    # Adds coef * mean(r_chosen + r_rejected)^2 to the loss (Eisenstein et al. 2023), so scores
    # centre on zero: comparable across prompts and usable as is by PPO. None: off (TRL's).
    center_rewards_coefficient: float | None = Field(None, ge=0)


# TRL's DPO loss variants offered here (DPOConfig.loss_type). "sft" is only useful combined with
# a preference loss: ["sigmoid", "sft"] is RPO (Pang et al. 2024), DPO plus the chosen reply's
# negative log-likelihood, which keeps DPO from lowering the likelihood of right answers while it
# widens their margin over wrong ones.
DPOLoss = Literal["sigmoid", "ipo", "hinge", "robust", "sft"]


class DPOJobConfig(JobConfig):
    learning_rate: float = Field(1e-6, gt=0, le=1)
    max_length: PositiveInt = 1024
    beta: float = Field(0.1, gt=0)  # strength of the KL pull towards the reference model
    loss_type: list[DPOLoss] = Field(default_factory=lambda: ["sigmoid"], min_length=1)
    # One weight per loss_type entry (None: 1.0 each), as TRL combines them.
    loss_weights: list[Annotated[float, Field(ge=0)]] | None = None
    # Compute the reference model's log-probabilities once before training instead of every
    # step: one forward pass per pair up front, and no reference model in memory while training.
    precompute_ref_log_probs: bool = False

    @model_validator(mode="after")
    def _a_weight_per_loss(self):
        if len(set(self.loss_type)) != len(self.loss_type):
            raise ValueError(f"loss_type names a loss twice: {self.loss_type}")
        if self.loss_type == ["sft"]:
            raise ValueError('loss_type ["sft"] alone is SFT: combine it, e.g. ["sigmoid", "sft"]')
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(
                f"loss_weights has {len(self.loss_weights)} weights for "
                f"{len(self.loss_type)} loss types {self.loss_type}"
            )
        return self


class OnlineJobConfig(JobConfig):
    """Kinds that sample completions from the policy and score them with a reward model."""

    # TRL defaults to 512 new tokens; 128 keeps rollouts affordable on CPU and within the tiny
    # model's 512 positions, and is plenty for short verifiable answers.
    max_completion_length: PositiveInt = 128
    temperature: float = Field(1.0, gt=0, le=10)


class PPOJobConfig(OnlineJobConfig):
    learning_rate: float = Field(3e-6, gt=0, le=1)
    temperature: float = Field(0.7, gt=0, le=10)
    kl_coef: float = Field(0.05, ge=0)
    num_ppo_epochs: PositiveInt = 4  # optimisation passes over each batch of rollouts
    # Subtracted from the score of a completion that never emits EOS (None: no penalty).
    missing_eos_penalty: float | None = Field(None, ge=0)

    @model_validator(mode="after")
    def _no_quantized_ppo(self):
        # TRL's experimental PPOTrainer takes loaded models (modeling/ml/ppo.py), and its value
        # model trains in full: a 4-bit policy would save nothing there.
        if self.quantization != "none":
            raise ValueError("quantization is not supported for ppo; use rloo or grpo for QLoRA")
        return self


class _GroupedJobConfig(OnlineJobConfig):
    num_generations: int = Field(ge=2)  # completions per prompt: the group the baseline uses
    beta: float = Field(ge=0)  # KL coefficient; 0 skips the reference model entirely
    # Verifiable rewards by registered name (modeling/ml/rewards.py), besides or instead of the
    # job's reward model. Weighted sum with reward_weights: the reward model's weight first when
    # the job has one, then one per function in this order (None: 1.0 each, as in TRL).
    reward_functions: list[str] = Field(default_factory=list)
    reward_weights: list[float] | None = None
    # The regex a whole reply must match for the `format` reward.
    format_pattern: str = Field(DEFAULT_FORMAT_PATTERN, min_length=1, max_length=500)

    @field_validator("reward_functions")
    @classmethod
    def _registered(cls, names: list[str]) -> list[str]:
        known = registered_rewards()
        unknown = [name for name in names if name not in known]
        if unknown:
            raise ValueError(
                f"unknown reward function(s) {unknown}; registered: {', '.join(known)}"
            )
        if len(set(names)) != len(names):
            raise ValueError(f"a reward function is named twice: {names}")
        return names

    @field_validator("format_pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a valid regular expression: {exc}") from exc
        return pattern

    @model_validator(mode="after")
    def _a_weight_per_reward(self):
        # Whether the job has a reward model is known at launch (modeling/services/jobs.py
        # checks the exact count); here the count fits with or without one.
        n = len(self.reward_functions)
        if self.reward_weights is not None and len(self.reward_weights) not in (n, n + 1):
            raise ValueError(
                f"reward_weights has {len(self.reward_weights)} weights for {n} reward "
                f"function(s) (and at most one reward model)"
            )
        return self

    @model_validator(mode="after")
    def _groups_fit_in_a_batch(self):
        # TRL samples whole groups: the generation batch (batch_size x gradient_accumulation)
        # must hold a whole number of them.
        if self.effective_batch_size % self.num_generations:
            raise ValueError(
                f"batch_size * gradient_accumulation_steps ({self.effective_batch_size}) must be "
                f"a multiple of num_generations ({self.num_generations})"
            )
        return self


class RLOOJobConfig(_GroupedJobConfig):
    learning_rate: float = Field(1e-6, gt=0, le=1)
    num_generations: int = Field(2, ge=2)
    beta: float = Field(0.05, ge=0)


class GRPOJobConfig(_GroupedJobConfig):
    learning_rate: float = Field(1e-6, gt=0, le=1)
    num_generations: int = Field(8, ge=2)
    beta: float = Field(0.0, ge=0)


CONFIG_CLASSES: dict[str, type[JobConfig]] = {
    "sft": SFTJobConfig,
    "reward": RewardJobConfig,
    "dpo": DPOJobConfig,
    "ppo": PPOJobConfig,
    "rloo": RLOOJobConfig,
    "grpo": GRPOJobConfig,
}

# The metric a progress bar or a job list shows first, as logged by TRL for each kind.
MAIN_METRIC: dict[str, str] = {
    "sft": "loss",
    "reward": "accuracy",
    "dpo": "loss",
    "ppo": "objective/rlhf_reward",
    "rloo": "reward",
    "grpo": "reward",
}


def parse_job_config(kind: str, raw: dict[str, Any] | None) -> JobConfig:
    """Validate a job's raw JSON config; raises ValueError (unknown kind) or ValidationError."""
    if kind not in CONFIG_CLASSES:
        raise ValueError(
            f"Unknown training kind {kind!r}; expected one of {sorted(CONFIG_CLASSES)}"
        )
    return CONFIG_CLASSES[kind].model_validate(raw or {})


def estimate_steps(kind: str, config: JobConfig, n_train_rows: int) -> int:
    """Optimizer steps the trainer will run, computed the way transformers/TRL compute them.

    Used for progress bars before the trainer exists. max_steps wins when set; otherwise
    ceil(epochs * updates per epoch), where an update consumes batch_size * grad_accum items.
    """
    if config.max_steps is not None:
        return config.max_steps
    if n_train_rows <= 0:
        return 0
    ga = config.gradient_accumulation_steps
    if kind in ("sft", "reward", "dpo"):
        # Trainer: ceil(rows / batch) batches, ceil(batches / grad_accum) updates (at least 1).
        batches = math.ceil(n_train_rows / config.batch_size)
        per_epoch = max(math.ceil(batches / ga), 1)
        return math.ceil(config.epochs * per_epoch)
    if kind == "ppo":
        # PPOTrainer: episodes = epochs * rows, one update per batch of rollouts (rounded up).
        return math.ceil(int(config.epochs * n_train_rows) / config.effective_batch_size)
    if kind in ("rloo", "grpo"):
        # RepeatSampler: each generation round uses whole prompts (batch / num_generations of
        # them, remainder dropped), and one round feeds gradient_accumulation micro-batches,
        # that is one update.
        prompts_per_update = config.effective_batch_size // config.num_generations
        per_epoch = max(n_train_rows // prompts_per_update, 1)
        return math.ceil(config.epochs * per_epoch)
    raise ValueError(f"Unknown training kind {kind!r}")
