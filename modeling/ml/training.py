"""Training jobs on TRL: SFT, reward modelling, DPO, PPO, RLOO and GRPO.

    from modeling.ml import parse_job_config, train
    config = parse_job_config("sft", {"learning_rate": 1e-4, "max_steps": 100})
    result = train("sft", config, model_path="var/models/tiny", dataset_dir=..., output_dir=...)

Setup (config, device, data, base model) -> trainer -> train (from the last checkpoint when
resuming) -> save (model or LoRA adapter, tokenizer, veredicto.json) -> cleanup (checkpoints).

Datasets are TRL's conversational shapes, one JSON object per line in dataset_dir/train.jsonl
(and optionally test.jsonl, evaluated after training for sft, reward and dpo):
    sft           {"messages": [{"role": ..., "content": ...}, ...]} (split into prompt and last
                  reply for completion_only_loss, the fallback of templates without
                  {% generation %} markers: modeling/ml/chat_templates.py)
    reward, dpo   {"prompt": [messages], "chosen": [assistant message], "rejected": [...]}
    ppo/rloo/grpo {"prompt": [messages]}, and for rloo/grpo optionally "reference" (the answer
                  the exact_match reward compares with)
Other columns (the export's metadata) are dropped before TRL sees them.

RLOO and GRPO score their samples with a reward model, with Python reward functions registered
by name (modeling/ml/rewards.py: config.reward_functions), or both, weighted (reward_weights).
"""

import importlib.util
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset, load_dataset
from datasets.exceptions import DatasetGenerationError
from transformers import PrinterCallback, set_seed
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from jobs.metrics import finite_metrics
from modeling.ml.chat_templates import as_prompt_completion, sft_loss_fallback
from modeling.ml.configs import CONFIG_CLASSES, JobConfig, estimate_steps, parse_job_config
from modeling.ml.loading import (
    is_lora_adapter,
    load_causal_lm,
    load_reward_model,
    load_tokenizer,
    write_model_card,
)
from modeling.ml.progress import ProgressCallback, ProgressReporter

COLUMNS = {
    "sft": ["messages"],
    "reward": ["prompt", "chosen", "rejected"],
    "dpo": ["prompt", "chosen", "rejected"],
    "ppo": ["prompt"],
    "rloo": ["prompt"],
    "grpo": ["prompt"],
}
# Columns kept when present, for reward functions (TRL passes every column to them).
OPTIONAL_COLUMNS = {"rloo": ["reference"], "grpo": ["reference"]}
ONLINE_KINDS = {"ppo", "rloo", "grpo"}  # sample from the policy, scored by rewards


@dataclass
class TrainResult:
    output_dir: str
    steps: int  # optimizer steps done, counting those before a resume
    metrics: dict[str, float]  # last logged value of each metric, plus eval_* when evaluated
    train_tokens: int  # non-padding tokens the model was trained on (prompt + completion)
    stopped: bool  # cancelled via reporter.should_stop(): no final model was written


class _SilentReporter:
    def report(self, *, step, total_steps, metrics, log_line=None) -> None:
        pass

    def should_stop(self) -> bool:
        return False


def train(
    kind: str,
    config: JobConfig | dict[str, Any],
    *,
    model_path: str,
    dataset_dir: str,
    output_dir: str,
    reward_model_path: str | None = None,
    reporter: ProgressReporter | None = None,
    resume: bool = False,
) -> TrainResult:
    """Train `kind` from model_path on dataset_dir into output_dir.

    On success output_dir holds a transformers checkpoint (or, with LoRA, a PEFT adapter), the
    tokenizer and veredicto.json; intermediate checkpoints are deleted. When the reporter asks to
    stop, training ends after the current step and nothing final is written: the checkpoints
    already saved (config.save_steps, every 200 steps by default) stay, and a later call with
    resume=True continues from the last of them. Without a checkpoint, resume=True starts from
    scratch (PPO always does: TRL's experimental PPOTrainer cannot restore its value model and
    rollout state).
    """
    # -- setup: config, data, checkpoints, base model
    if kind not in CONFIG_CLASSES:
        raise ValueError(
            f"Unknown training kind {kind!r}; expected one of {sorted(CONFIG_CLASSES)}"
        )
    if not isinstance(config, CONFIG_CLASSES[kind]):
        config = parse_job_config(kind, dict(config))
    if kind in ONLINE_KINDS and not (reward_model_path or getattr(config, "reward_functions", [])):
        raise ValueError(
            f"{kind} needs reward_model_path (a reward model checkpoint)"
            + (" or reward_functions" if kind != "ppo" else "")
        )
    reporter = reporter or _SilentReporter()
    output = Path(output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    set_seed(config.seed)

    train_rows = load_rows(Path(dataset_dir, "train.jsonl"), kind)
    test_path = Path(dataset_dir, "test.jsonl")
    # A snapshot writes test.jsonl even when nothing was held out: an empty one means no eval.
    has_test = test_path.is_file() and test_path.stat().st_size > 0
    eval_rows = load_rows(test_path, kind) if has_test and kind not in ONLINE_KINDS else None
    if kind in ("rloo", "grpo"):
        prompts_per_update = config.effective_batch_size // config.num_generations
        if len(train_rows) < prompts_per_update:
            raise ValueError(
                f"{kind} needs at least {prompts_per_update} prompts (batch_size * "
                f"gradient_accumulation_steps / num_generations); train.jsonl has {len(train_rows)}"
            )

    checkpoint = get_last_checkpoint(str(output)) if resume else None
    if not resume:
        # A fresh run must neither resume from nor rotate away an earlier attempt's checkpoints.
        for old in output.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
            shutil.rmtree(old)
    base_path, merged_base = plain_base(model_path, output / "base")
    tokenizer = load_tokenizer(base_path)
    notes = []
    if kind == "sft" and config.assistant_only_loss:
        # Launch checks this already (modeling/services/jobs.py); a job queued before that check
        # existed, or whose tokenizer the web host could not load, falls back here too.
        note = sft_loss_fallback(tokenizer, train_rows[0]["messages"])
        if note:
            config = config.model_copy(
                update={"assistant_only_loss": False, "completion_only_loss": True}
            )
            notes.append(note)
    if kind == "sft" and config.completion_only_loss:
        train_rows = train_rows.map(as_prompt_completion, remove_columns=["messages"])
        if eval_rows is not None:
            eval_rows = eval_rows.map(as_prompt_completion, remove_columns=["messages"])
    callback = ProgressCallback(reporter, hard_stop=kind == "ppo")
    total = estimate_steps(kind, config, len(train_rows))
    start_step = int(Path(checkpoint).name.rsplit("-", 1)[1]) if checkpoint else 0
    start = f"resuming from {Path(checkpoint).name}" if checkpoint else "starting"
    reporter.report(
        step=start_step,
        total_steps=total,
        metrics={},
        log_line="\n".join([*notes, f"{kind}: {start}, {total} steps"]),
    )

    finished = False
    try:
        # -- trainer
        trainer = build_trainer(
            kind,
            config,
            output=output,
            base_path=base_path,
            tokenizer=tokenizer,
            train_rows=train_rows,
            eval_rows=eval_rows,
            reward_model_path=reward_model_path,
            callback=callback,
        )
        # With tqdm off, transformers prints every log entry; ProgressCallback reports them.
        trainer.remove_callback(PrinterCallback)
        if kind == "sft" and config.packing:
            # Packing made fewer, longer rows: the steps are counted on those.
            total = estimate_steps(kind, config, len(trainer.train_dataset))
            reporter.report(
                step=start_step,
                total_steps=total,
                metrics={},
                log_line=f"packed {len(train_rows)} conversations into "
                f"{len(trainer.train_dataset)} rows of up to {config.max_length} tokens: "
                f"{total} steps",
            )

        # -- train
        trainer.train(resume_from_checkpoint=checkpoint)
        steps = trainer.state.global_step
        if callback.stopped:
            reporter.report(
                step=steps, total_steps=total, metrics=callback.metrics, log_line="cancelled"
            )
            return TrainResult(str(output), steps, callback.metrics, train_tokens(trainer), True)
        metrics = dict(callback.metrics)
        if eval_rows is not None:
            metrics.update(finite_metrics(trainer.evaluate()))

        # -- save: the final model (or adapter) next to the tokenizer, then the card
        trainer.save_model(str(output))
        # The base's tokenizer, not the trainer's: PPO and GRPO switch theirs to left padding.
        tokenizer.save_pretrained(output)
        card = write_model_card(
            output,
            kind="reward" if kind == "reward" else "policy",
            base_model=model_path,
            lora=config.lora,
            parameter_count=parameter_count(trainer),
            train_tokens=train_tokens(trainer),
        )
        finished = True
    finally:
        # -- cleanup. A merged base stays only as the base of a new adapter (its config points
        # there); finished runs need no checkpoints; interrupted ones keep them for resume.
        if merged_base and not (finished and config.lora):
            shutil.rmtree(merged_base, ignore_errors=True)
    for done in output.glob(f"{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.rmtree(done)
    reporter.report(step=steps, total_steps=total, metrics=metrics, log_line=f"saved to {output}")
    return TrainResult(str(output), steps, metrics, card["train_tokens"], False)


def load_rows(path: Path, kind: str) -> Dataset:
    """The columns TRL needs for `kind`, with a clear error when one is missing."""
    if not path.is_file():
        raise FileNotFoundError(f"No {path.name} in {path.parent}")
    try:
        rows = load_dataset("json", data_files=str(path), split="train")
    except DatasetGenerationError as exc:  # says only "An error occurred"; the cause says where
        raise ValueError(f"{path.name} is not valid JSON Lines: {exc.__cause__}") from exc
    missing = [c for c in COLUMNS[kind] if c not in rows.column_names]
    if missing:
        raise ValueError(f"{path.name}: {kind} rows need the column(s) {missing}")
    if len(rows) == 0:
        raise ValueError(f"{path.name} has no rows")
    optional = [c for c in OPTIONAL_COLUMNS.get(kind, []) if c in rows.column_names]
    return rows.select_columns(COLUMNS[kind] + optional)


def plain_base(model_path: str, merged_dir: Path) -> tuple[str, Path | None]:
    """A model directory TRL can load, and reload by path for its reference models.

    A LoRA adapter is merged into its base and saved to merged_dir (TRL rebuilds reference
    models from config._name_or_path, which for an in-memory merge would name the *unmerged*
    base). Local paths are made absolute: a new adapter records its base's path, read later
    from another working directory.
    """
    if not is_lora_adapter(model_path):
        local = Path(model_path)
        return (str(local.resolve()) if local.is_dir() else model_path), None
    model = load_causal_lm(model_path)
    model.save_pretrained(merged_dir)
    load_tokenizer(model_path).save_pretrained(merged_dir)
    return str(merged_dir), merged_dir


@dataclass(frozen=True)
class TRLTrainer:
    """How one kind maps onto TRL: its trainer and config classes (names in `trl`), and the
    fields of our job config passed to TRL's config under the same name."""

    trainer: str
    config: str
    fields: tuple[str, ...]
    online: bool = False  # samples from the policy and scores with reward_funcs


# PPO is not here: TRL's experimental PPOTrainer takes other arguments (modeling/ml/ppo.py).
TRL_TRAINERS: dict[str, TRLTrainer] = {
    "sft": TRLTrainer(
        "SFTTrainer",
        "SFTConfig",
        ("max_length", "assistant_only_loss", "completion_only_loss", "packing"),
    ),
    # RewardTrainer adds a fresh scalar head (num_labels=1), seeded by args.seed.
    "reward": TRLTrainer(
        "RewardTrainer", "RewardConfig", ("max_length", "center_rewards_coefficient")
    ),
    # DPOTrainer loads the reference again from base_path (or, with LoRA, disables the adapter).
    "dpo": TRLTrainer(
        "DPOTrainer",
        "DPOConfig",
        ("max_length", "beta", "loss_type", "loss_weights", "precompute_ref_log_probs"),
    ),
    "rloo": TRLTrainer(
        "RLOOTrainer",
        "RLOOConfig",
        ("num_generations", "max_completion_length", "temperature", "beta", "reward_weights"),
        online=True,
    ),
    "grpo": TRLTrainer(
        "GRPOTrainer",
        "GRPOConfig",
        ("num_generations", "max_completion_length", "temperature", "beta", "reward_weights"),
        online=True,
    ),
}


def build_trainer(
    kind: str,
    config: JobConfig,
    *,
    output: Path,
    base_path: str,
    tokenizer,
    train_rows: Dataset,
    eval_rows: Dataset | None,
    reward_model_path: str | None,
    callback: ProgressCallback,
):
    """The TRL trainer for `kind`, with our config mapped onto TRL's config class."""
    args = common_args(config, output)
    peft_config = lora_config(config, "SEQ_CLS" if kind == "reward" else "CAUSAL_LM")
    if kind == "ppo":
        from modeling.ml.ppo import ppo_trainer

        return ppo_trainer(
            config,
            args,
            policy_path=base_path,
            reward_model_path=reward_model_path,
            tokenizer=tokenizer,
            train_rows=train_rows,
            peft_config=peft_config,
            callback=callback,
        )
    if kind not in TRL_TRAINERS:
        raise ValueError(f"Unknown training kind {kind!r}")
    import trl

    spec = TRL_TRAINERS[kind]
    ours = {name: getattr(config, name) for name in spec.fields}
    if spec.online:
        # Rollouts are sampled in batches, each prompt ending where its completion starts; the
        # reward model reads prompt + completion rendered with its own tokenizer and template,
        # reward functions read the text (their processing class is None).
        funcs, classes = online_rewards(config, reward_model_path)
        data = dict(
            processing_class=load_tokenizer(base_path, padding_side="left"),
            reward_funcs=funcs,
            reward_processing_classes=classes,
        )
    else:
        ours["include_num_input_tokens_seen"] = "non_padding"
        data = dict(processing_class=tokenizer, eval_dataset=eval_rows)
        if eval_rows is not None and config.eval_steps:
            args.update(eval_strategy="steps", eval_steps=config.eval_steps)
    return getattr(trl, spec.trainer)(
        model=base_path,
        args=getattr(trl, spec.config)(**args, **ours),
        train_dataset=train_rows,
        peft_config=peft_config,
        quantization_config=quantization_config(config),
        callbacks=[callback],
        **data,
    )


def online_rewards(config: JobConfig, reward_model_path: str | None) -> tuple[list, list]:
    """TRL's reward_funcs and reward_processing_classes: the reward model first (when the job
    has one), then the registered functions in the config's order, as reward_weights expects."""
    from modeling.ml.rewards import reward_function

    funcs, classes = [], []
    if reward_model_path:
        funcs.append(load_reward_model(reward_model_path))
        classes.append(load_tokenizer(reward_model_path))
    for name in config.reward_functions:
        params = {"pattern": config.format_pattern} if name == "format" else {}
        funcs.append(reward_function(name, **params))
        classes.append(None)
    if config.reward_weights is not None and len(config.reward_weights) != len(funcs):
        raise ValueError(
            f"reward_weights has {len(config.reward_weights)} weights for {len(funcs)} rewards "
            f"({'a reward model and ' if reward_model_path else ''}"
            f"{len(config.reward_functions)} function(s))"
        )
    return funcs, classes


def common_args(config: JobConfig, output: Path) -> dict[str, Any]:
    """TrainingArguments shared by every kind, including the CPU/GPU precision choices."""
    return dict(
        output_dir=str(output),
        learning_rate=config.learning_rate,
        num_train_epochs=config.epochs,
        max_steps=config.max_steps or -1,
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        seed=config.seed,
        data_seed=config.seed,
        report_to=config.report_to,
        logging_steps=1,  # every step reaches ProgressCallback, which throttles its reports
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=config.save_total_limit,
        eval_strategy="no",
        disable_tqdm=True,
        # transformers takes a warmup below 1 as a fraction of the steps, from 1 up as steps.
        warmup_steps=config.warmup_steps or config.warmup_ratio,
        lr_scheduler_type=config.lr_scheduler_type,
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        **device_args(config),
    )


def device_args(config: JobConfig) -> dict[str, Any]:
    """TRL defaults to bf16 and gradient checkpointing; on CPU neither helps, so both are off."""
    if not torch.cuda.is_available():
        if config.precision in ("bf16", "fp16"):
            raise ValueError(f"precision={config.precision!r} needs a GPU; use 'auto' or 'fp32'")
        return dict(use_cpu=True, bf16=False, fp16=False, activation_checkpointing=False)
    bf16 = config.precision == "bf16" or (
        config.precision == "auto" and torch.cuda.is_bf16_supported()
    )
    return dict(
        bf16=bf16,
        fp16=config.precision == "fp16",
        activation_checkpointing=config.gradient_checkpointing,
    )


def quantization_config(config: JobConfig):
    """QLoRA's base: 4-bit NF4 weights with double quantization, bf16 compute (the QLoRA paper's
    recipe). Needs CUDA and bitsandbytes (`pip install ".[gpu]"`); launch refuses it on a
    deployment without them (modeling/services/jobs.py), this says so on a worker without."""
    if config.quantization == "none":
        return None
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        raise ValueError(
            "quantization '4bit' needs a CUDA GPU with bitsandbytes installed "
            '(`pip install ".[gpu]"` on the GPU workers)'
        )
    return bnb_4bit_config()


def bnb_4bit_config():
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=torch.bfloat16,
    )


def lora_config(config: JobConfig, task_type: str):
    if not config.lora:
        return None
    from peft import LoraConfig

    # SEQ_CLS makes PEFT train and save the new score head alongside the adapter.
    return LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=config.lora_targets,
        task_type=task_type,
    )


def parameter_count(trainer) -> int:
    """Parameters of the model as served: with LoRA, the base's (adapters merge into it)."""
    # PPO's trainer.model wraps policy and value model; the policy is what gets saved.
    model = trainer.policy_model if hasattr(trainer, "policy_model") else trainer.model
    if hasattr(model, "get_nb_trainable_parameters"):  # a PeftModel
        trainable, total = model.get_nb_trainable_parameters()
        return total - trainable
    return sum(p.numel() for p in model.parameters())


def train_tokens(trainer) -> int:
    """Non-padding tokens trained on, counted by the trainer and restored on resume."""
    return int(getattr(trainer, "train_tokens", None) or trainer.state.num_input_tokens_seen)
