"""The evaluation dashboard and its pages: who may see and launch what, the checkpoint table
(latest results with intervals, lineage, filters, sorting, htmx partials), CSV export, the
comparison of two checkpoints, run pages, and a 200 checkpoints × 50 metrics page in a fixed
handful of queries and well under a second."""

from __future__ import annotations

import csv
import datetime as dt
import html
import io
import json
import re
import time
from pathlib import Path

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from evals.ml.definitions import MULTIPLE_CHOICE_DEFINITION, PERPLEXITY_DEFINITION
from evals.models import EvalResult, EvalRun, EvalSample, RunStatus, Suite
from feedback.models import DatasetSnapshot, SnapshotKind
from jobs.models import Status
from modeling.models import Checkpoint, CheckpointKind, TrainingJob
from tests.factories import ProjectFactory

pytestmark = pytest.mark.django_db

HX = {"HTTP_HX_REQUEST": "true"}


def checkpoint(name: str, kind: str = CheckpointKind.POLICY, **fields) -> Checkpoint:
    return Checkpoint.objects.create(name=name, kind=kind, storage_path=f"/models/{name}", **fields)


def record(
    ckpt: Checkpoint,
    suite: str,
    task: str,
    metrics: dict[str, float | tuple],
    *,
    status: str = RunStatus.SUCCEEDED,
    samples: list[tuple[str, str, bool | None]] = (),
) -> EvalRun:
    """A finished run with its results: metric -> value or (value, stderr, low, high, n)."""
    now = timezone.now()
    run = EvalRun.objects.create(
        checkpoint=ckpt, suite=suite, task=task, status=status, started_at=now, finished_at=now
    )
    for metric, numbers in metrics.items():
        value, stderr, low, high, n = (
            numbers if isinstance(numbers, tuple) else (numbers,) + (None,) * 4
        )
        EvalResult.objects.create(
            run=run, metric=metric, value=value, stderr=stderr, ci_low=low, ci_high=high, n=n
        )
    for position, (prompt, output, correct) in enumerate(samples):
        EvalSample.objects.create(
            run=run, position=position, prompt=prompt, output=output, target="4", correct=correct
        )
    return run


@pytest.fixture
def snapshot(db):
    return DatasetSnapshot.objects.create(
        project=ProjectFactory(name="Maths"),
        name="maths prefs",
        kind=SnapshotKind.PREFERENCE,
        status=Status.SUCCEEDED,
    )


@pytest.fixture
def lineage(snapshot, admin_user):
    """base → sft (trained on the Maths snapshot), plus an unrelated reward model."""
    base = checkpoint("base")
    job = TrainingJob.objects.create(
        kind="sft", parent=base, snapshot=snapshot, config={}, time_limit_seconds=60
    )
    sft = checkpoint("base-sft-1", parent=base, base_model=base, job=job, snapshot=snapshot)
    rm = checkpoint("other-rm", CheckpointKind.REWARD)
    record(base, Suite.MULTIPLE_CHOICE, "facts_mc", {"acc": (0.4, 0.05, 0.302, 0.498, 20)})
    record(sft, Suite.MULTIPLE_CHOICE, "facts_mc", {"acc": (0.2, 0.04, 0.12, 0.28, 20)})
    # a newer run of the same task supersedes the older one; a failed run never counts
    record(sft, Suite.MULTIPLE_CHOICE, "facts_mc", {"acc": (0.8, 0.04, 0.72, 0.88, 20)})
    record(sft, Suite.MULTIPLE_CHOICE, "facts_mc", {"acc": 0.01}, status=RunStatus.FAILED)
    record(sft, Suite.PERPLEXITY, "heldout_prose", {"word_perplexity": 12.5})
    record(rm, Suite.REWARD_ACCURACY, "heldout_preferences", {"accuracy": (0.7, 0.1, 0.5, 0.9, 9)})
    return {"base": base, "sft": sft, "rm": rm}


def assert_nothing_from_another_host(page: str) -> None:
    """Scripts, styles and images come from this server (the chart library is vendored) or
    inline (the favicon's data: URI), never a CDN. Checked on the attributes, not on the text:
    a CSRF token once held the letters "cdn"."""
    sources = re.findall(r'<(?:script|img|iframe)\b[^>]*\bsrc="([^"]*)"', page)
    sources += re.findall(r'<link\b[^>]*\bhref="([^"]*)"', page)
    local = [s for s in sources if s.startswith("data:") or re.match(r"/(?!/)", s)]
    assert sources and local == sources, sources


def table_rows(content: bytes) -> list[str]:
    """Checkpoint names in table order."""
    body = content.decode().split('<table class="data eval-table">', 1)[1].split("</table>", 1)[0]
    return re.findall(r'<th class="sticky" scope="row"><a href="[^"]+">([^<]+)</a>', body)


# --- roles -------------------------------------------------------------------------------------


def pages(lineage) -> list[str]:
    run = EvalRun.objects.first()
    return [
        "/evals/dashboard/",
        "/evals/dashboard/evaluations.csv",
        f"/evals/dashboard/compare/?a={lineage['base'].pk}&b={lineage['sft'].pk}",
        f"/train/checkpoints/{lineage['sft'].pk}/",  # the checkpoint page, with its evaluations
        f"/evals/runs/{run.pk}/",
        f"/evals/projects/{lineage['sft'].snapshot.project_id}/leaderboard/",
    ]


@pytest.mark.parametrize("who", ["annotator", "nobody"])
def test_annotators_get_403_on_every_evaluation_page(client, request, who, lineage):
    client.force_login(request.getfixturevalue(who))
    for url in [*pages(lineage), "/evals/runs/new/"]:
        assert client.get(url).status_code == 403, url


def test_reviewers_see_every_page_but_cannot_launch(client, reviewer, lineage):
    client.force_login(reviewer)
    for url in pages(lineage):
        assert client.get(url).status_code == 200, url
    assert b"Run an evaluation" not in client.get("/evals/dashboard/").content
    assert client.get("/evals/runs/new/").status_code == 403
    post = {"checkpoint": lineage["sft"].pk, "suite": Suite.PERPLEXITY}
    assert client.post("/evals/runs/new/", post).status_code == 403
    run = EvalRun.objects.first()
    assert client.post(f"/evals/runs/{run.pk}/rerun/").status_code == 403
    assert EvalRun.objects.count() == 6


def test_admin_launches_a_run_from_the_form(
    client, admin_user, lineage, django_capture_on_commit_callbacks
):
    client.force_login(admin_user)
    assert client.get(f"/evals/runs/new/?checkpoint={lineage['sft'].pk}").status_code == 200
    form = {"checkpoint": lineage["sft"].pk, "suite": Suite.MULTIPLE_CHOICE, "task": "facts_mc"}
    with django_capture_on_commit_callbacks() as messages:
        response = client.post("/evals/runs/new/", {**form, "limit": 5})
    run = EvalRun.objects.get(status=RunStatus.QUEUED)
    assert response.status_code == 302 and response["Location"] == f"/evals/runs/{run.pk}/"
    assert (run.task, run.params, run.created_by) == ("facts_mc", {"limit": 5}, admin_user)
    assert len(messages) == 1  # the Celery message goes out when the request commits
    page = client.get(response["Location"])
    assert b"Queued" in page.content and b'hx-trigger="every 2s"' in page.content


def test_the_perplexity_stride_is_set_on_the_form_and_refused_for_other_suites(
    client, admin_user, lineage
):
    client.force_login(admin_user)
    sft = lineage["sft"].pk
    client.post("/evals/runs/new/", {"checkpoint": sft, "suite": Suite.PERPLEXITY, "stride": 128})
    assert EvalRun.objects.get(status=RunStatus.QUEUED).params == {"stride": 128}
    response = client.post(
        "/evals/runs/new/",
        {"checkpoint": sft, "suite": Suite.MULTIPLE_CHOICE, "task": "facts_mc", "stride": 128},
    )
    assert (
        response.status_code == 422 and b"Unknown for multiple_choice: stride" in response.content
    )


@pytest.fixture
def uploads(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT / "eval_tasks"


def upload(name: str, lines: list) -> SimpleUploadedFile:
    return SimpleUploadedFile(name, "".join(json.dumps(line) + "\n" for line in lines).encode())


def test_an_uploaded_text_set_is_kept_where_the_workers_read_it(
    client, admin_user, lineage, uploads
):
    client.force_login(admin_user)
    lines = [{"text": "A dog has 4 legs."}, {"text": "<script>alert(1)</script>"}]
    response = client.post(
        "/evals/runs/new/",
        {"checkpoint": lineage["sft"].pk, "suite": Suite.PERPLEXITY,
         "task_file": upload("my prose.jsonl", lines)},
    )  # fmt: skip
    assert response.status_code == 302, response.content
    run = EvalRun.objects.get(status=RunStatus.QUEUED)
    path = Path(run.params["task_path"])
    assert path.is_absolute() and path.parent.parent == uploads.resolve()
    assert [json.loads(line) for line in path.read_text().splitlines()] == lines
    assert run.task == "my_prose"


@pytest.mark.parametrize(
    ("suite", "name", "lines", "reason"),
    [
        (Suite.MULTIPLE_CHOICE, "mc.jsonl", [{"question": "2+2?", "choices": ["4"]}],
         "line 1: missing &#x27;answer&#x27;"),
        (Suite.MULTIPLE_CHOICE, "mc.jsonl", [{"question": "2+2?", "choices": [], "answer": 0}],
         "line 1: &#x27;choices&#x27; must be a non-empty list"),
        (Suite.MULTIPLE_CHOICE, "mc.jsonl", [{"question": "2+2?", "choices": ["4"], "answer": 1}],
         "line 1: answer index 1 is out of range for 1 choices"),
        (Suite.PERPLEXITY, "prose.jsonl", [{"body": "no text"}],
         "line 1: missing &#x27;text&#x27;"),
        (Suite.PERPLEXITY, "prose.jsonl", [], "The submitted file is empty."),
        (Suite.PERPLEXITY, "prose.jsonl", [["not", "an", "object"]], "line 1: expected a JSON"),
        (Suite.PERPLEXITY, "prose.txt", [{"text": "x"}], "name ending in .jsonl"),
        (Suite.LM_EVAL, "x.jsonl", [{"text": "x"}], "This suite reads no uploaded file."),
    ],
)  # fmt: skip
def test_an_upload_the_run_could_not_read_is_refused_and_not_kept(
    client, admin_user, lineage, uploads, suite, name, lines, reason
):
    client.force_login(admin_user)
    response = client.post(
        "/evals/runs/new/",
        {"checkpoint": lineage["sft"].pk, "suite": suite, "task": "anything",
         "task_file": upload(name, lines)},
    )  # fmt: skip
    assert response.status_code == 422
    assert reason in response.content.decode()
    assert not EvalRun.objects.filter(status=RunStatus.QUEUED).exists()
    assert not uploads.exists() or not any(uploads.iterdir())


def test_an_upload_for_a_run_refused_for_another_reason_is_not_kept(
    client, admin_user, lineage, uploads
):
    client.force_login(admin_user)
    pairs = [{"prompt": "2+2?", "chosen": "4", "rejected": "5"}]
    response = client.post(
        "/evals/runs/new/",
        {"checkpoint": lineage["sft"].pk, "suite": Suite.REWARD_ACCURACY,  # sft is a policy
         "task_file": upload("pairs.jsonl", pairs)},
    )  # fmt: skip
    assert response.status_code == 422 and b"not a reward model" in response.content
    assert uploads.is_dir() and not any(uploads.iterdir())


def test_the_launch_form_shows_why_a_run_cannot_run(client, admin_user, lineage):
    client.force_login(admin_user)
    response = client.post(
        "/evals/runs/new/", {"checkpoint": lineage["sft"].pk, "suite": Suite.WIN_RATE}
    )
    assert response.status_code == 422
    assert b"A win rate needs a reward model to judge the replies." in response.content
    assert not EvalRun.objects.filter(status=RunStatus.QUEUED).exists()


def test_admins_queue_the_default_suites_of_a_registered_model(
    client, admin_user, reviewer, lineage
):
    url = f"/evals/dashboard/checkpoints/{lineage['base'].pk}/defaults/"
    client.force_login(reviewer)
    assert client.post(url).status_code == 403
    client.force_login(admin_user)
    assert (
        b"Run the default suites" in client.get(f"/train/checkpoints/{lineage['base'].pk}/").content
    )
    response = client.post(url)
    assert response["Location"] == f"/train/checkpoints/{lineage['base'].pk}/#evaluations"
    queued = EvalRun.objects.filter(checkpoint=lineage["base"], status=RunStatus.QUEUED)
    assert queued.count() == 5 and {run.created_by for run in queued} == {admin_user}


def test_running_again_keeps_the_old_run(client, admin_user, lineage):
    client.force_login(admin_user)
    old = EvalRun.objects.filter(checkpoint=lineage["sft"], status=RunStatus.SUCCEEDED).first()
    response = client.post(f"/evals/runs/{old.pk}/rerun/")
    new = EvalRun.objects.latest("id")
    assert response["Location"] == f"/evals/runs/{new.pk}/"
    assert (new.suite, new.task, new.status) == (old.suite, old.task, RunStatus.QUEUED)
    assert old.results.exists()


# --- the checkpoint table ------------------------------------------------------------------------


def test_dashboard_shows_latest_results_with_intervals_lineage_and_definitions(
    client, reviewer, lineage
):
    client.force_login(reviewer)
    page = client.get("/evals/dashboard/").content.decode()
    # the newest succeeded run of sft's facts_mc (0.8), not the older 0.2 or the failed 0.01
    assert 'title="95% CI 0.72 – 0.88 · stderr 0.04 · n = 20' in page
    assert ">0.8<small>0.72 – 0.88</small>" in page
    assert ">0.2<" not in page and ">0.01<" not in page
    assert "base → " in page and "SFT job #" in page and "“maths prefs”" in page
    # metric definitions from evals.ml as tooltips (escaped like any text)
    assert html.escape(PERPLEXITY_DEFINITION) in page
    assert html.escape(MULTIPLE_CHOICE_DEFINITION) in page
    assert '<script src="/static/vendor/chartjs/chart.umd.min.js"' in page
    assert_nothing_from_another_host(page)


def test_only_admins_get_a_link_to_the_job_and_its_loss_chart(
    client, reviewer, admin_user, lineage
):
    job_link = f'href="/train/jobs/{lineage["sft"].job_id}/"'
    client.force_login(reviewer)
    assert job_link not in client.get("/evals/dashboard/").content.decode()
    client.force_login(admin_user)
    assert job_link in client.get("/evals/dashboard/").content.decode()


def test_filters_by_project_kind_and_date(client, reviewer, lineage):
    client.force_login(reviewer)
    project = lineage["sft"].snapshot.project
    # a project's checkpoints: those trained on its snapshots, and their parents and bases
    assert sorted(table_rows(client.get(f"/evals/dashboard/?project={project.pk}").content)) == [
        "base",
        "base-sft-1",
    ]
    assert table_rows(client.get("/evals/dashboard/?kind=reward").content) == ["other-rm"]
    Checkpoint.objects.filter(pk=lineage["base"].pk).update(
        created_at=timezone.now() - dt.timedelta(days=30)
    )
    since = (timezone.now() - dt.timedelta(days=1)).date().isoformat()
    assert "base" not in table_rows(client.get(f"/evals/dashboard/?created_from={since}").content)
    # an invalid date is reported and ignored
    response = client.get("/evals/dashboard/?created_from=yesterday")
    assert response.status_code == 200 and b"Enter a valid date." in response.content
    assert len(table_rows(response.content)) == 3


def test_sorts_by_any_metric_column_with_missing_values_last(client, reviewer, lineage):
    client.force_login(reviewer)
    key = "multiple_choice/facts_mc/acc"
    assert table_rows(client.get(f"/evals/dashboard/?sort={key}").content) == [
        "base",
        "base-sft-1",
        "other-rm",
    ]
    assert table_rows(client.get(f"/evals/dashboard/?sort=-{key}").content) == [
        "base-sft-1",
        "base",
        "other-rm",
    ]
    assert table_rows(client.get("/evals/dashboard/?sort=name").content) == [
        "base",
        "base-sft-1",
        "other-rm",
    ]
    assert table_rows(client.get("/evals/dashboard/?sort=lineage").content) == [
        "base",
        "base-sft-1",
        "other-rm",
    ]
    # an unknown column falls back to newest first
    assert table_rows(client.get("/evals/dashboard/?sort=nonsense").content)[0] == "other-rm"


def test_htmx_requests_get_only_their_partial(client, reviewer, lineage):
    client.force_login(reviewer)
    results = client.get("/evals/dashboard/?kind=policy", HTTP_HX_TARGET="dashboard-results", **HX)
    content = results.content.decode().strip()
    assert content.startswith('<div id="dashboard-results">') and "<html" not in content
    assert table_rows(results.content) == ["base-sft-1", "base"]
    chart = (
        client.get(
            "/evals/dashboard/?metric=perplexity/heldout_prose/word_perplexity",
            HTTP_HX_TARGET="metric-chart",
            **HX,
        )
        .content.decode()
        .strip()
    )
    assert chart.startswith('<div id="metric-chart"') and "eval-table" not in chart
    assert '"key": "perplexity/heldout_prose/word_perplexity"' in chart
    assert '"lowerIsBetter": true' in chart
    runs = (
        client.get("/evals/dashboard/", HTTP_HX_TARGET="eval-runs", **HX).content.decode().strip()
    )
    assert runs.startswith('<div id="eval-runs"') and "eval-table" not in runs


def test_the_chart_series_follows_checkpoints_in_order_with_intervals(client, reviewer, lineage):
    client.force_login(reviewer)
    page = client.get("/evals/dashboard/?metric=multiple_choice/facts_mc/acc").content.decode()
    series = re.search(r'<script id="metric-series" type="application/json">(.*?)</script>', page)
    assert series is not None
    data = json.loads(series.group(1))
    assert data["labels"] == ["base", "base-sft-1"]
    assert data["datasets"] == [
        {"label": "base", "data": [0.4, 0.8], "errorBars": [[0.302, 0.498], [0.72, 0.88]]}
    ]


# --- CSV -----------------------------------------------------------------------------------------


def test_csv_export_has_one_line_per_checkpoint_and_metric(client, reviewer, lineage):
    client.force_login(reviewer)
    response = client.get("/evals/dashboard/evaluations.csv?kind=policy&sort=name")
    assert response["Content-Type"].startswith("text/csv")
    assert "attachment" in response["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [(r["checkpoint"], r["suite"], r["task"], r["metric"], r["value"]) for r in rows] == [
        ("base", "multiple_choice", "facts_mc", "acc", "0.4"),
        ("base-sft-1", "perplexity", "heldout_prose", "word_perplexity", "12.5"),
        ("base-sft-1", "multiple_choice", "facts_mc", "acc", "0.8"),
    ]
    sft = rows[2]
    assert (sft["ci_low"], sft["ci_high"], sft["stderr"], sft["n"]) == (
        "0.72",
        "0.88",
        "0.04",
        "20",
    )
    assert (sft["base_model"], sft["parent"], sft["snapshot"], sft["project"]) == (
        "base",
        "base",
        "maths prefs",
        "Maths",
    )
    assert sft["job_id"] == str(lineage["sft"].job_id)
    assert rows[1]["ci_low"] == rows[1]["stderr"] == ""  # perplexity has no interval


def test_csv_export_defuses_spreadsheet_formulas_in_names(client, reviewer, db):
    record(checkpoint("=HYPERLINK(1)"), Suite.PERPLEXITY, "heldout_prose", {"bits_per_byte": -1.5})
    client.force_login(reviewer)
    rows = list(
        csv.reader(io.StringIO(client.get("/evals/dashboard/evaluations.csv").content.decode()))
    )
    assert rows[1][0] == "'=HYPERLINK(1)"
    assert rows[1][12] == "-1.5"  # numbers stay numbers


# --- comparison, checkpoint and run pages -------------------------------------------------------


def test_compare_shows_metric_deltas_and_answers_to_the_same_prompts(client, reviewer, lineage):
    base, sft = lineage["base"], lineage["sft"]
    hostile = "<script>alert('x')</script>"
    record(base, Suite.GENERATIVE, "toy_qa_gen", {"exact_match": 0.0},
           samples=[("2 + 2 = ?", "5", False), ("3 + 3 = ?", hostile, False)])  # fmt: skip
    record(sft, Suite.GENERATIVE, "toy_qa_gen", {"exact_match": 0.5},
           samples=[("3 + 3 = ?", "6", True), ("2 + 2 = ?", "4", True)])  # fmt: skip
    client.force_login(reviewer)
    page = client.get(f"/evals/dashboard/compare/?a={base.pk}&b={sft.pk}").content.decode()
    assert "+0.4" in page  # facts_mc acc: 0.8 − 0.4
    assert '<span class="badge">base-sft-1</span>' in page  # intervals 0.72–0.88 vs 0.30–0.50
    assert "+0.5" in page  # exact_match
    answers = page.split("Answers to the same prompts", 1)[1]
    # joined by prompt: sft's "4" sits next to base's "5" on the same row
    assert re.search(r"2 \+ 2 = \?.*?>5</div>.*?>4</div>", answers, re.S)
    assert hostile not in page and html.escape(hostile) in page


def test_compare_without_both_checkpoints_shows_the_form(client, reviewer, lineage):
    client.force_login(reviewer)
    response = client.get("/evals/dashboard/compare/?a=999999")
    assert response.status_code == 200 and b"Select a valid choice" in response.content


def test_checkpoint_page_lists_latest_results_and_the_whole_history(client, reviewer, lineage):
    client.force_login(reviewer)
    page = client.get(f"/train/checkpoints/{lineage['sft'].pk}/").content.decode()
    assert page.count('href="/evals/runs/') >= 4  # every run, failed one included
    assert "0.72 – 0.88" in page and "Failed" in page


def test_run_page_shows_the_reason_a_run_failed(client, reviewer, policy_with_failed_run):
    client.force_login(reviewer)
    page = client.get(f"/evals/runs/{policy_with_failed_run.pk}/").content.decode()
    assert "Bad task file: bad.jsonl line 3: missing &#x27;answer&#x27;" in page
    assert "hx-trigger" not in page  # finished: no polling


@pytest.fixture
def policy_with_failed_run(db):
    run = record(checkpoint("broken"), Suite.MULTIPLE_CHOICE, "bad", {}, status=RunStatus.FAILED)
    run.error = "Bad task file: bad.jsonl line 3: missing 'answer' (the index of the right choice)"
    run.save()
    return run


# --- 200 checkpoints × 50 metrics ----------------------------------------------------------------


@pytest.fixture
def big_registry(snapshot):
    """200 checkpoints (a base and 199 trained ones, each with a job and snapshot), each with 50
    metrics from 10 runs of 5 metrics, plus an older superseded run per checkpoint."""
    base = checkpoint("big-base")
    jobs = TrainingJob.objects.bulk_create(
        TrainingJob(kind="sft", parent=base, snapshot=snapshot, config={}, time_limit_seconds=60)
        for _ in range(199)
    )
    start = timezone.now() - dt.timedelta(days=200)
    trained = Checkpoint.objects.bulk_create(
        Checkpoint(
            name=f"big-{i:03d}",
            kind=CheckpointKind.POLICY,
            storage_path=f"/models/big-{i}",
            parent=base,
            base_model=base,
            job=job,
            snapshot=snapshot,
            created_at=start + dt.timedelta(days=i),
        )
        for i, job in enumerate(jobs)
    )
    checkpoints = [base, *trained]
    now = timezone.now()
    runs = EvalRun.objects.bulk_create(
        EvalRun(
            checkpoint=c,
            suite=Suite.MULTIPLE_CHOICE,
            task=f"task_{t:02d}",
            status=RunStatus.SUCCEEDED,
            finished_at=now,
        )
        for c in checkpoints
        for t in [0, *range(10)]  # task_00 twice: the first is history
    )
    EvalResult.objects.bulk_create(
        EvalResult(
            run=run,
            metric=f"metric_{m}",
            value=(run.pk % 97) / 100,
            stderr=0.01,
            ci_low=(run.pk % 97) / 100 - 0.02,
            ci_high=(run.pk % 97) / 100 + 0.02,
            n=100,
        )
        for run in runs
        for m in range(5)
    )
    return checkpoints


def test_dashboard_with_200_checkpoints_and_50_metrics_is_fast_and_not_n_plus_1(
    client, reviewer, big_registry, django_assert_max_num_queries
):
    client.force_login(reviewer)
    # One request first, as any running server has had: it compiles the templates (a one-off
    # ~0.3 s); the page itself is what is measured.
    response = client.get("/evals/dashboard/")
    assert len(table_rows(response.content)) == 200
    assert response.content.decode().count('class="num metric-head"') == 50
    # The page, sorting by a metric (the htmx swap of the table) and the CSV export: each a
    # fixed handful of queries (session, user, roles, stale check, project filter choices,
    # checkpoints, latest results, arena, recent runs and their results), and the best of three
    # under a second of this process's CPU (the page's Python: rendering 200 × 50 cells), so
    # that other work on a shared 2-core test machine does not decide it (wall time did: 1.4 s
    # at load 4 in a clean-clone run beside two demo runs).
    for url, headers in [
        ("/evals/dashboard/", {}),
        (
            "/evals/dashboard/?sort=-multiple_choice/task_03/metric_2",
            {"HTTP_HX_TARGET": "dashboard-results", **HX},
        ),
        ("/evals/dashboard/evaluations.csv", {}),
    ]:
        timings = []
        for _ in range(3):
            with django_assert_max_num_queries(10):
                started = time.process_time()
                assert client.get(url, **headers).status_code == 200
                timings.append(time.process_time() - started)
        assert min(timings) < 1.0, f"{url}: {', '.join(f'{t:.2f}' for t in timings)} CPU s"


def test_compare_pairs_the_answers_and_lists_the_prompts_that_changed_first(
    client, reviewer, lineage
):
    """Paired on the same prompts: the difference of right answers with its interval (as
    evals.ml.paired computes it, tested against scipy) and McNemar's p; the prompts where the
    two checkpoints differ come before those where they agree."""
    from evals.ml.paired import mcnemar_p, paired_difference

    base, sft = lineage["base"], lineage["sft"]
    # 12 prompts: both right on 0-5, base wrong and sft right on 6-9, base right and sft wrong
    # on 10, both wrong (with different words) on 11.
    base_right = [True] * 6 + [False] * 4 + [True, False]
    sft_right = [True] * 6 + [True] * 4 + [False, False]
    for model, name, right in ((base, "base", base_right), (sft, "sft", sft_right)):
        answers = [(f"q{i}", "x" if ok else f"{name}{i}", ok) for i, ok in enumerate(right)]
        record(model, Suite.GENERATIVE, "toy_qa_gen", {"exact_match": sum(right) / 12},
               samples=answers)  # fmt: skip
    client.force_login(reviewer)
    page = client.get(f"/evals/dashboard/compare/?a={base.pk}&b={sft.pk}").content.decode()

    expected = paired_difference([float(v) for v in base_right], [float(v) for v in sft_right])
    assert f"{expected}" in html.unescape(page)  # "+0.250 [-0.0…, +0.5…]"
    assert f"McNemar p {mcnemar_p(base_right, sft_right):.2g}" in page
    assert "5 prompts one got right and the other wrong, 6 answered differently" in page
    answers = page.split("Answers to the same prompts", 1)[1]
    order = [int(m) for m in re.findall(r'<div class="text">q(\d+)</div>', answers)]
    assert order[:5] == [6, 7, 8, 9, 10]  # right/wrong changed, in the task's order
    assert order[5] == 11  # both wrong, different words
    assert order[6:] == [0, 1, 2, 3, 4, 5]  # the same answer


# --- a project's own chart ---------------------------------------------------------------------


def test_a_project_s_dashboard_opens_on_its_own_metric_which_admins_choose(
    client, admin_user, reviewer, lineage, snapshot
):
    project = snapshot.project
    client.force_login(reviewer)
    page = client.get(f"/evals/dashboard/?project={project.pk}")
    first, second = (c.key for c in page.context["board"].columns)
    assert page.context["metric"] == first
    assert (
        client.post(
            "/evals/dashboard/chart-default/", {"project": project.pk, "metric": second}
        ).status_code
        == 403
    )

    client.force_login(admin_user)
    offered = client.get(f"/evals/dashboard/?project={project.pk}&metric={second}")
    assert f"Open {project.name} on this metric" in offered.content.decode()
    chosen = client.post(
        "/evals/dashboard/chart-default/", {"project": project.pk, "metric": second}
    )
    assert chosen.status_code == 302
    page = client.get(f"/evals/dashboard/?project={project.pk}")
    assert page.context["metric"] == second
    assert "its dashboard opens on it" in page.content.decode()
    # Asked for another metric, or without the project filter, the chart shows that instead.
    other = client.get(f"/evals/dashboard/?project={project.pk}&metric={first}")
    assert other.context["metric"] == first
    everything = client.get("/evals/dashboard/").context
    assert everything["metric"] == everything["board"].columns[0].key
    refused = client.post(
        "/evals/dashboard/chart-default/",
        {"project": project.pk, "metric": "nonsense"},
        follow=True,
    )
    assert "Choose a metric of the dashboard" in refused.content.decode()
    assert client.get(f"/evals/dashboard/?project={project.pk}").context["metric"] == second


def test_a_measurement_made_elsewhere_is_kept_as_a_run_with_its_samples(lineage):
    from evals.services import eval_run_record, mean_of, proportion_metric
    from evals.services.suites import Outcome

    outcome = Outcome(
        metrics=[proportion_metric("task_score", [True, False, True, True]),
                 mean_of("sampled_accuracy", [0.5, 0.25, 1.0, 0.75])],
        samples=[{"position": 0, "prompt": "2+2", "output": "4", "correct": True}],
    )  # fmt: skip
    run = eval_run_record(
        checkpoint=lineage["sft"], suite=Suite.GENERATIVE, task="toy-held-out", outcome=outcome
    )
    assert run.status == RunStatus.SUCCEEDED and run.finished_at and run.enqueued_at
    score = run.results.get(metric="task_score")
    assert (score.value, score.n) == (0.75, 4)
    assert score.ci_low == pytest.approx(0.3006, abs=1e-3)  # Wilson, 3 of 4
    assert score.ci_high == pytest.approx(0.9544, abs=1e-3)
    assert run.results.get(metric="sampled_accuracy").value == pytest.approx(0.625)
    assert run.samples.get().correct is True
