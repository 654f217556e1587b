"""Registering and launching jobs on real model families: what is checked before anything is
queued (the pad token, the SFT loss mask, PPO's reward tokenizer), against the real database and
the real Redis queue, and that a re-run resumes with the default checkpoint settings."""

from __future__ import annotations

import json
import shutil
from functools import partial

import pytest
from django.core.exceptions import ValidationError

from loop.families import build_family_model
from modeling import services
from modeling.ml import training
from modeling.ml.chat_templates import FALLBACK_NOTE
from modeling.models import CheckpointKind, JobStatus, TrainingJob
from tests.modeling.helpers import queued_messages

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_gpu_queue")]

FAST = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory):
    built: dict[str, str] = {}

    def get(family: str) -> str:
        if family not in built:
            built[family] = build_family_model(family, str(tmp_path_factory.mktemp(family)))
        return built[family]

    return get


@pytest.fixture
def register(admin_user, family_dir):
    def register(family: str, kind: str = CheckpointKind.POLICY):
        return services.checkpoint_register(
            name=f"{family}-{kind}",
            storage_path=family_dir(family),
            kind=kind,
            registered_by=admin_user,
        )

    return register


def test_registering_llama3_names_the_pad_token_it_will_use(register):
    assert "'<|reserved_special_token_0|>'" in register("llama3").notes
    assert register("qwen2_5").notes == ""  # Qwen2.5 ships <|endoftext|> as its pad


def test_a_model_with_no_pad_to_pick_and_no_spare_row_is_refused(admin_user, family_dir, tmp_path):
    # A tokenizer whose only specials are BOS and EOS, on an embedding exactly its size.
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(vocab={"a": 0, "<s>": 1, "</s>": 2}, merges=[]))
    PreTrainedTokenizerFast(
        tokenizer_object=bpe, bos_token="<s>", eos_token="</s>"
    ).save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "vocab_size": 3}))
    with pytest.raises(ValidationError, match="no pad token distinct from EOS"):
        services.checkpoint_register(
            name="nopad", storage_path=str(tmp_path), registered_by=admin_user
        )


def test_sft_on_mistral_is_queued_with_the_prompt_completion_fallback_and_says_so(
    admin_user, register, make_snapshot
):
    job = services.job_launch(
        kind="sft",
        parent=register("mistral"),
        snapshot=make_snapshot("sft"),
        config=FAST,
        launched_by=admin_user,
        enqueue=False,
    )
    assert job.config["assistant_only_loss"] is False
    assert job.config["completion_only_loss"] is True
    assert FALLBACK_NOTE in job.log_tail  # on the job page before a worker picks it up

    done = services.run_training_job(job=job)
    assert done.status == JobStatus.SUCCEEDED, done.error
    assert FALLBACK_NOTE in done.log_tail
    assert done.result is not None


def test_sft_on_llama3_keeps_assistant_only_loss(admin_user, register, make_snapshot):
    job = services.job_launch(
        kind="sft",
        parent=register("llama3"),
        snapshot=make_snapshot("sft"),
        config=FAST,
        launched_by=admin_user,
        enqueue=False,
    )
    assert job.config["assistant_only_loss"] is True and job.log_tail == ""


def test_ppo_refuses_a_reward_model_with_another_tokenizer_and_queues_nothing(
    admin_user, register, make_snapshot
):
    with pytest.raises(ValidationError) as exc:
        services.job_launch(
            kind="ppo",
            parent=register("llama3"),
            snapshot=make_snapshot("prompts"),
            reward_model=register("qwen2_5", CheckpointKind.REWARD),
            config=FAST,
            launched_by=admin_user,
        )
    assert (
        "tokenize differently: their vocabularies differ"
        in exc.value.message_dict["reward_model"][0]
    )
    assert not TrainingJob.objects.exists() and queued_messages() == 0


def test_grpo_accepts_a_reward_model_with_another_tokenizer(admin_user, register, make_snapshot):
    """GRPO (and RLOO) decode each rollout and render it with the reward model's own tokenizer
    and template, so a reward model of another family scores what it was trained to read."""
    job = services.job_launch(
        kind="grpo",
        parent=register("llama3"),
        snapshot=make_snapshot("prompts"),
        reward_model=register("qwen2_5", CheckpointKind.REWARD),
        config={**FAST, "num_generations": 2},
        launched_by=admin_user,
        enqueue=False,
    )
    assert job.status == JobStatus.QUEUED


def test_a_rerun_resumes_with_the_default_checkpoint_settings(
    admin_user, register, make_snapshot, monkeypatch
):
    """No save_steps in the config: the default (every 200 steps) is what lets Re-run resume."""
    job = services.job_launch(
        kind="sft",
        parent=register("llama3"),
        snapshot=make_snapshot("sft"),
        config={**FAST, "max_steps": 201},
        launched_by=admin_user,
        enqueue=False,
    )
    assert "save_steps" not in FAST and job.config["save_steps"] == 200

    class CancelAtStep200(services.JobReporter):
        def should_stop(self) -> bool:
            if self.step >= 200 and not self.cancelled:
                # Press Cancel, and see it now rather than at the next (throttled) poll.
                TrainingJob.objects.filter(pk=self.job_id).update(cancel_requested=True)
                self.cancelled = True
            return super().should_stop()

    with monkeypatch.context() as patch:
        patch.setattr(services.runner, "JobReporter", CancelAtStep200)
        # Every step reported (not one per 2 s), so the cancel lands right after step 200.
        unthrottled = partial(training.ProgressCallback, min_interval_s=0)
        patch.setattr(training, "ProgressCallback", unthrottled)
        first = services.run_training_job(job=job)
    assert first.status == JobStatus.CANCELLED, first.error
    assert first.step == 200

    rerun = services.run_training_job(job=services.job_rerun(job=first, launched_by=admin_user))
    assert rerun.status == JobStatus.SUCCEEDED, rerun.error
    assert rerun.resumed_from.endswith(f"{first.pk}-1/checkpoint-200")
    assert rerun.step == 201
    shutil.rmtree(first.output_dir, ignore_errors=True)
