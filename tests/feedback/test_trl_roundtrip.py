"""The data round trip, as a user outside Veredicto would do it: annotate through the services,
snapshot, `datasets.load_dataset("json", ...)` on the exported file, and hand it straight to TRL's
own trainers (no Veredicto adapter in between), one step each on the tiny local model."""

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
from trl import DPOConfig, DPOTrainer, RewardConfig, RewardTrainer, SFTConfig, SFTTrainer

from feedback import services
from feedback.models import TaskKind
from tests.factories import ProjectFactory, annotator

pytestmark = pytest.mark.django_db

CPU = {"use_cpu": True, "bf16": False, "fp16": False, "activation_checkpointing": False}


@pytest.fixture
def snapshots(roles, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    project = ProjectFactory(overlap=1, task_kinds=[TaskKind.PAIRWISE, TaskKind.DEMONSTRATION])
    for n in range(6):
        prompt = services.prompt_create(
            project=project,
            system="Answer with the result only." if n % 2 else "",
            messages=f"What is {n} + 3?",
        )
        good = services.completion_create(prompt=prompt, text=str(n + 3))
        bad = services.completion_create(prompt=prompt, text=str(n + 4))
        services.item_create(project=project, kind=TaskKind.PAIRWISE, prompt=prompt,
                             completions=[bad, good])  # fmt: skip
        services.item_create(project=project, kind=TaskKind.DEMONSTRATION, prompt=prompt)
    user = annotator("labeller")
    while (a := services.task_next_for_annotator(project=project, annotator=user)) is not None:
        n = int(a.item.prompt.messages[-1]["content"].split()[2])
        if a.item.kind == TaskKind.PAIRWISE:
            services.pairwise_submit(
                assignment_id=a.pk, annotator=user, choice="b", strength="clear"
            )
        else:
            services.demonstration_submit(assignment_id=a.pk, annotator=user, text=str(n + 3))
    policy = {"test_fraction": 0}
    return {
        kind: services.snapshot_create(project=project, kind=kind, policy=policy)
        for kind in ("sft", "preference")
    }


def load(snapshot):
    return datasets.load_dataset("json", data_files=str(snapshot.path() / "train.jsonl"))["train"]


def weights(model):
    return torch.cat([p.detach().flatten().clone() for p in model.parameters()])


def test_sft_snapshot_trains_with_trl_sft_trainer(snapshots, tiny_model_dir, tmp_path):
    dataset = load(snapshots["sft"])
    assert dataset.num_rows == 6 and dataset[0]["messages"][-1]["role"] == "assistant"
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = weights(model)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=1, per_device_train_batch_size=2,
                       max_length=64, report_to="none", save_strategy="no", **CPU),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )  # fmt: skip
    trainer.train()
    assert not torch.equal(before, weights(model))


def test_preference_snapshot_trains_with_trl_dpo_trainer(snapshots, tiny_model_dir, tmp_path):
    dataset = load(snapshots["preference"])
    assert dataset.num_rows == 6
    assert {"prompt", "chosen", "rejected", "agreement"} <= set(dataset.column_names)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    before = weights(model)
    trainer = DPOTrainer(
        model=model,
        args=DPOConfig(output_dir=str(tmp_path / "dpo"), max_steps=1, per_device_train_batch_size=2,
                       max_length=64, report_to="none", save_strategy="no", **CPU),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(tiny_model_dir),
    )  # fmt: skip
    trainer.train()
    assert not torch.equal(before, weights(model))


def test_preference_snapshot_trains_with_trl_reward_trainer(snapshots, tiny_model_dir, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    model.config.pad_token_id = tokenizer.pad_token_id
    before = weights(model)
    trainer = RewardTrainer(
        model=model,
        args=RewardConfig(output_dir=str(tmp_path / "rm"), max_steps=1,
                          per_device_train_batch_size=2, max_length=64, report_to="none",
                          save_strategy="no", **CPU),
        train_dataset=load(snapshots["preference"]),
        processing_class=tokenizer,
    )  # fmt: skip
    trainer.train()
    assert not torch.equal(before, weights(model))
