"""lm-evaluation-harness through our adapter, end to end and offline: a shipped task written as
an lm-eval task YAML over a local JSON file, run by lm_eval.simple_evaluate on the tiny
checkpoint as an EvalRun, its results stored beside our own suites' and chosen from the UI."""

from __future__ import annotations

import dataclasses

import pytest

from evals import selectors, services
from evals.ml import evaluate_mc, load_mc_task, shipped_lm_eval_task_names, shipped_tasks
from evals.ml.lm_eval_adapter import write_shipped_lm_eval_tasks
from evals.models import EvalRun, RunStatus, Suite
from loop.testing import tiny_lm, tiny_model_dir
from modeling.models import Checkpoint

LIMIT = 8


@pytest.fixture
def policy(db):
    return Checkpoint.objects.create(name="tiny", kind="policy", storage_path=str(tiny_model_dir()))


def test_every_shipped_multiple_choice_task_is_an_lm_eval_task(tmp_path):
    names = write_shipped_lm_eval_tasks(tmp_path)
    assert names == shipped_lm_eval_task_names()
    assert {"veredicto_arithmetic_mc", "veredicto_facts_mc", "veredicto_word_order_mc"} <= set(
        names
    )
    for name in names:
        assert (tmp_path / f"{name}.yaml").is_file() and (tmp_path / f"{name}.jsonl").is_file()


def test_an_lm_eval_task_runs_offline_and_is_stored_beside_our_suites(policy):
    ours = services.runs._create(
        checkpoint=policy, suite=Suite.MULTIPLE_CHOICE, task="facts_mc", params={"limit": LIMIT}
    )
    theirs = services.runs._create(
        checkpoint=policy,
        suite=Suite.LM_EVAL,
        task="veredicto_facts_mc",
        params={"limit": LIMIT, "batch_size": 4},
    )
    for run in (ours, theirs):
        run = services.run_eval(run=run, worker_host="test-worker")
        assert run.status == RunStatus.SUCCEEDED, run.error

    theirs.refresh_from_db()
    assert theirs.summary["versions"] == {"veredicto_facts_mc": 1.0}
    results = {r.metric: r for r in theirs.results.all()}
    assert set(results) == {"acc", "acc_norm"}
    for result in results.values():
        assert result.n == LIMIT
        assert result.stderr is not None and result.stderr > 0
        assert result.ci_low < result.value < result.ci_high or result.value in (0.0, 1.0)

    # lm-eval's number is what our scorer gives on the same items in lm-eval's plain format.
    model, tokenizer = tiny_lm()
    plain = dataclasses.replace(
        load_mc_task(shipped_tasks()["facts_mc"]), chat=False, target_delimiter=" "
    )
    expected = evaluate_mc(model, tokenizer, plain, limit=LIMIT)
    assert results["acc"].value == pytest.approx(expected["acc"], abs=1e-12)
    assert results["acc_norm"].value == pytest.approx(expected["acc_norm"], abs=1e-12)
    assert results["acc"].stderr == pytest.approx(expected["acc_stderr"], rel=1e-9)

    # Both suites' numbers are in the checkpoint's latest results, side by side.
    columns = {
        (suite, task, metric)
        for _, suite, task, metric, *_ in selectors.latest_results(checkpoints=[policy.pk])
    }
    assert ("multiple_choice", "facts_mc", "acc") in columns
    assert ("lm_eval", "veredicto_facts_mc", "acc") in columns


def test_an_unknown_lm_eval_task_fails_the_run_with_the_reason(policy):
    run = services.runs._create(checkpoint=policy, suite=Suite.LM_EVAL, task="no_such_task_xyz")
    run = services.run_eval(run=run, worker_host="test-worker")
    assert run.status == RunStatus.FAILED
    assert "no_such_task_xyz" in run.error


def test_admins_choose_an_lm_eval_task_on_the_new_run_page(client, admin_user, policy):
    client.force_login(admin_user)
    page = client.get("/evals/runs/new/")
    assert 'value="lm_eval"' in page.text
    for name in shipped_lm_eval_task_names():
        assert f'<option value="{name}">' in page.text
    response = client.post(
        "/evals/runs/new/",
        {"checkpoint": policy.pk, "suite": "lm_eval", "task": "veredicto_facts_mc", "limit": 4},
    )
    run = EvalRun.objects.get()
    assert response.status_code == 302
    assert (run.suite, run.task, run.params) == ("lm_eval", "veredicto_facts_mc", {"limit": 4})
    assert run.status == RunStatus.QUEUED
