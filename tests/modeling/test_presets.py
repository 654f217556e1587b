"""Launch-form presets (modeling/presets.py): data the form applies server-side, per kind."""

from __future__ import annotations

import pytest

from modeling.ml import CONFIG_CLASSES, parse_job_config
from modeling.models import TrainingJob
from modeling.presets import PRESETS, preset_values


@pytest.mark.parametrize("kind", sorted(CONFIG_CLASSES))
@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_validates_for_every_kind(kind, name):
    values = preset_values(kind=kind, names=[name])
    config = parse_job_config(kind, values)
    assert set(values) <= set(CONFIG_CLASSES[kind].model_fields)
    assert config.lora == PRESETS[name]["values"]["lora"]


def test_lora_learning_rate_is_ten_times_the_kinds_full_fine_tuning_rate():
    assert preset_values(kind="sft", names=["lora"])["learning_rate"] == 2e-4  # default 2e-5
    assert preset_values(kind="dpo", names=["lora"])["learning_rate"] == 1e-5  # default 1e-6
    assert "learning_rate" not in preset_values(kind="sft", names=["small"])


def test_presets_apply_in_order_and_unknown_names_are_skipped():
    values = preset_values(kind="sft", names=["13b", "nonsense", "7b"])
    assert values["batch_size"] == 2  # the 7B preset, applied last
    assert values["quantization"] == "4bit"  # from 13B, which 7B does not mention
    assert preset_values(kind="sft", names=["nonsense"]) == {}


def test_ppo_gets_the_13b_shape_without_quantization():
    values = preset_values(kind="ppo", names=["13b"])
    assert "quantization" not in values
    assert values["gradient_accumulation_steps"] == 16
    assert "max_length" not in preset_values(kind="ppo", names=["small"])


# -- the form, server-side


@pytest.mark.django_db
def test_a_preset_link_fills_the_launch_form_without_javascript(admin_client, base_checkpoint):
    page = admin_client.get(f"/train/jobs/new/sft/?preset=7b&parent={base_checkpoint.pk}")
    html = page.content.decode()
    assert page.status_code == 200
    assert 'name="cfg_batch_size" value="2"' in html
    assert 'name="cfg_gradient_accumulation_steps" value="8"' in html
    assert 'name="cfg_learning_rate" value="0.0002"' in html
    assert 'name="cfg_lora" id="id_cfg_lora" checked' in html
    assert 'name="cfg_gradient_checkpointing" id="id_cfg_gradient_checkpointing" checked' in html
    assert '<option value="cosine" selected>' in html
    assert "Filled in by the preset" in html
    # Each link adds its preset to those applied and keeps the chosen checkpoint.
    query = f"preset=7b&amp;preset=lora&amp;parent={base_checkpoint.pk}"
    assert f'href="/train/jobs/new/sft/?{query}"' in html
    assert "<script" not in html.split('<nav class="launch-presets"')[1].split("</nav>")[0]


@pytest.mark.django_db
def test_without_a_preset_the_form_shows_the_defaults(admin_client, base_checkpoint):
    html = admin_client.get("/train/jobs/new/sft/?preset=bogus").content.decode()
    assert 'name="cfg_batch_size" value="8"' in html
    assert 'name="cfg_learning_rate" value="2e-05"' in html
    assert "Filled in by the preset" not in html
    hostile = admin_client.get("/train/jobs/new/sft/", {"preset": "<script>alert(1)</script>"})
    assert hostile.status_code == 200 and "alert(1)" not in hostile.content.decode()


@pytest.mark.django_db
def test_a_preset_only_fills_the_inputs_it_does_not_launch(admin_client, base_checkpoint):
    admin_client.get("/train/jobs/new/dpo/?preset=lora")
    assert not TrainingJob.objects.exists()
