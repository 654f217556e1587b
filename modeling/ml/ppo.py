"""PPO through TRL's experimental PPOTrainer: the only module that imports trl.experimental.

When TRL moves or replaces PPO, this file is the one to change. It builds a trainer that behaves
like the stable ones as training.py uses them: train(resume_from_checkpoint=...), cancellation,
state.global_step/max_steps, save_model() and a train_tokens count.

Differences from the stable trainers, handled here:
- PPOTrainer takes tokenized prompts (input_ids, left-padded for generation), not messages.
- It needs four models: the policy, a frozen reference (a copy of the policy, or the policy with
  its LoRA adapter disabled), the frozen reward model, and a value model, initialised from the
  reward model's weights and trained alongside the policy.
- Its loop has no resume and ignores control.should_training_stop; ProgressCallback(hard_stop)
  raises TrainingCancelled instead, caught in train() below.
- It ignores max_steps; total_episodes carries it (episodes = steps * effective batch).
- Four fp32 models of a real size do not fit where training them should: the frozen two
  (reference, reward) only run forward passes and load in bf16 on a GPU that has it
  (frozen_model_dtype); the policy (full or LoRA) and the value model train in fp32 weights.
"""

import contextlib
import gc
import warnings

import torch
from datasets import Dataset
from transformers import DataCollatorWithPadding

with warnings.catch_warnings():
    # We know it is experimental: that is why it lives behind this one module.
    warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

from modeling.ml.configs import PPOJobConfig
from modeling.ml.loading import load_causal_lm, load_reward_model, load_tokenizer
from modeling.ml.progress import ProgressCallback, TrainingCancelled


def frozen_model_dtype(*, cuda: bool, bf16_supported: bool) -> torch.dtype:
    """The dtype of the models PPO never trains (reference and reward).

    bf16 halves their memory and their scores and log-probs only enter the loss as constants;
    on CPU they stay fp32, where bf16 matmuls are slow and the tests compare numbers exactly.
    """
    return torch.bfloat16 if cuda and bf16_supported else torch.float32


class _PPOTrainer(PPOTrainer):
    train_tokens = 0  # counted by a hook on the reward model, which scores every rollout

    def train(self, resume_from_checkpoint: str | None = None):
        # Checkpoints are never written (save_strategy="no"), so there is nothing to resume.
        # The loop runs gc.collect() twice per update, each a full scan of a heap that holds
        # torch, transformers and TRL (most of a second on 2 CPU cores). Frozen, the objects
        # that exist before training are skipped; what training allocates is still collected.
        gc.freeze()
        try:
            with contextlib.suppress(TrainingCancelled):  # see ProgressCallback(hard_stop=True)
                super().train()
        finally:
            gc.unfreeze()


def ppo_trainer(
    config: PPOJobConfig,
    common_args: dict,
    *,
    policy_path: str,
    reward_model_path: str,
    tokenizer,
    train_rows: Dataset,
    peft_config,
    callback: ProgressCallback,
) -> _PPOTrainer:
    if len(train_rows) < config.effective_batch_size:
        # The rollout loader drops incomplete batches and cycles forever: an empty one would hang.
        raise ValueError(
            f"ppo needs at least batch_size * gradient_accumulation_steps = "
            f"{config.effective_batch_size} prompts; train.jsonl has {len(train_rows)}"
        )
    args = PPOConfig(
        **{**common_args, "save_strategy": "no"},  # checkpoints could not be resumed anyway
        response_length=config.max_completion_length,
        temperature=config.temperature,
        kl_coef=config.kl_coef,
        num_ppo_epochs=config.num_ppo_epochs,
        missing_eos_penalty=config.missing_eos_penalty,
        stop_token="eos",  # truncate rollouts at EOS before scoring, as generate() does
        total_episodes=config.max_steps * config.effective_batch_size if config.max_steps else None,
        local_rollout_forward_batch_size=config.batch_size,
        num_sample_generations=0,  # its sample tables need an eval set and only print
        sft_model_path=policy_path,  # informational in PPOConfig; recorded in saved args
        reward_model_path=reward_model_path,
    )
    # Left padding: in a batch of prompts, each one ends where sampling starts.
    left_padded = load_tokenizer(policy_path, padding_side="left")
    prompts = train_rows.map(
        lambda row: {
            "input_ids": left_padded.apply_chat_template(
                row["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True
            )["input_ids"]
        },
        remove_columns=train_rows.column_names,
    )
    cuda = torch.cuda.is_available()
    frozen = frozen_model_dtype(cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported())
    reward_model = load_reward_model(reward_model_path, dtype=frozen)
    trainer = _PPOTrainer(
        args=args,
        processing_class=left_padded,
        model=load_causal_lm(policy_path),
        # Under LoRA the reference is the policy with its adapter disabled: no second copy.
        ref_model=None if peft_config else load_causal_lm(policy_path, dtype=frozen),
        reward_model=reward_model,
        train_dataset=prompts,
        value_model=load_reward_model(reward_model_path),
        data_collator=DataCollatorWithPadding(left_padded),
        peft_config=peft_config,
        callbacks=[callback],
    )

    def count_tokens(module, args, kwargs):
        # The reward model sees each rollout once, as prompt + completion up to EOS, unpadded.
        trainer.train_tokens += int(kwargs["attention_mask"].sum())

    backbone = getattr(reward_model, reward_model.base_model_prefix)
    backbone.register_forward_pre_hook(count_tokens, with_kwargs=True)
    return trainer
