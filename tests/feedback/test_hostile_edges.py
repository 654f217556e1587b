"""Hostile input at the edges: nesting bombs, lone surrogates, oversized bodies and absurd
page windows, invisible text, look-alike names, and request bodies that are not objects. Each
must be a clear 4xx (in the API's error shape) or an error naming the row, never a 500."""

from __future__ import annotations

import json
import unicodedata
from io import StringIO

import pytest
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError

from core.text import clean_text
from core.tokens import token_create
from feedback import services
from feedback.models import (
    Assignment,
    AssignmentStatus,
    DatasetSnapshot,
    Demonstration,
    PairwiseJudgement,
    Project,
    TaskKind,
)
from feedback.services import ImportOptions, import_file
from tests.factories import make_item

pytestmark = pytest.mark.django_db

LONE = "\ud800"  # a valid JSON escape, but no character: UTF-8 cannot encode it
# Only a charset that can carry a lone surrogate brings one into a form: "+2AA-" is U+D800 in
# UTF-7, which Django accepts as the charset of a multipart body.
LONE_UTF7 = "+2AA-"
BOMB = "[" * 100_000 + "]" * 100_000
PROJECT_FIELDS = {
    "task_kinds": "pairwise", "overlap": "1", "lease_seconds": "600", "gold_rate": "0",
    "labels-TOTAL_FORMS": "0", "labels-INITIAL_FORMS": "0",
}  # fmt: skip
INVISIBLE = "\u200b \u200c\u200d\u2060\ufeff\u3164\u00a0"


def bearer(user) -> dict:
    _, key = token_create(user=user, name=f"edges-{user.pk}")
    return {"Authorization": f"Bearer {key}"}


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content[:500]
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
    if code:
        assert body["error"]["code"] == code, body
    return body["error"]


def post_utf7(client, path: str, fields: dict[str, str], **kwargs):
    """A multipart form in UTF-7, the way a hostile client sends a lone surrogate."""
    parts = "".join(
        f'--B\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        for name, value in fields.items()
    )
    body = (parts + "--B--\r\n").encode()
    return client.generic(
        "POST", path, body, content_type="multipart/form-data; boundary=B; charset=utf-7", **kwargs
    )


def lease(user, item) -> Assignment:
    return services.task_next_for_annotator(project=item.project, annotator=user, kind=item.kind)


def nothing_written(assignment: Assignment) -> None:
    assert not Demonstration.objects.exists() and not PairwiseJudgement.objects.exists()
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.LEASED


def write_jsonl(path, lines: list[str]):
    path.write_text("".join(line + "\n" for line in lines))
    return path


def run_import(project, path, **options):
    return import_file(project=project, path=path, options=ImportOptions(**options))


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


# --- nesting bombs -------------------------------------------------------------------------------

GOOD = json.dumps({"prompt": "Q?", "chosen": "yes", "rejected": "no"})


def test_a_nesting_bomb_is_an_error_naming_its_row_in_an_import(project, admin_user, tmp_path):
    path = write_jsonl(tmp_path / "bomb.jsonl", [GOOD, '{"prompt": ' + BOMB + "}"])

    report = run_import(project, path)

    assert report.errors == [{"row": 2, "message": "nested too deeply to read"}]


def test_a_nesting_bomb_in_a_csv_json_column_names_its_row(project, admin_user, tmp_path):
    path = tmp_path / "bomb.csv"
    # A CSV field holds at most 128 KB: the bomb is smaller, and still too deep.
    bomb = "[" * 30_000 + "]" * 30_000
    path.write_text(f'prompt,chosen,rejected\nQ?,yes,no\n"{bomb}",a,b\n')

    report = run_import(project, path)

    assert [e["row"] for e in report.errors] == [3]
    assert "nested too deeply" in report.errors[0]["message"]


def test_a_nesting_bomb_in_the_import_preview_is_a_row_error_not_a_500(
    client, admin_user, project, media
):
    client.force_login(admin_user)
    content = (GOOD + "\n" + '{"prompt": ' + BOMB + "}\n").encode()

    response = client.post(
        f"/projects/{project.pk}/data/preview/",
        {"file": SimpleUploadedFile("bomb.jsonl", content), "shape": "auto",
         "comparison_mode": "pairwise", "pairing": "all_pairs"},
    )  # fmt: skip

    assert response.status_code == 200
    assert "Row 2: nested too deeply" in response.content.decode()


def test_import_data_names_the_row_of_a_nesting_bomb(project, admin_user, tmp_path):
    path = write_jsonl(tmp_path / "bomb.jsonl", [GOOD, BOMB])
    err = StringIO()

    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_data", str(path), project=project.name, stderr=err)

    assert "row 2: nested too deeply" in err.getvalue()


# --- lone surrogates -----------------------------------------------------------------------------


def test_clean_text_refuses_a_lone_surrogate():
    with pytest.raises(ValidationError, match="unpaired surrogate"):
        clean_text(f"a{LONE}b")
    assert (
        clean_text("emoji \U0001f600 is a pair, and fine") == "emoji \U0001f600 is a pair, and fine"
    )


@pytest.mark.parametrize("htmx", [False, True])
@pytest.mark.parametrize(
    ("kind", "action", "fields"),
    [
        (TaskKind.DEMONSTRATION, "submit", {"text": LONE_UTF7}),
        (TaskKind.PAIRWISE, "submit", {"side": "tie", "rationale": LONE_UTF7}),
        (TaskKind.PAIRWISE, "skip", {"reason": LONE_UTF7}),
    ],
    ids=["demonstration", "rationale", "skip-reason"],
)
def test_a_lone_surrogate_in_a_task_form_is_a_422(
    client, annotator, project, kind, action, fields, htmx
):
    assignment = lease(annotator, make_item(project, kind))
    client.force_login(annotator)

    response = post_utf7(
        client,
        f"/tasks/{assignment.pk}/{action}/",
        fields,
        headers={"HX-Request": "true"} if htmx else {},
    )

    assert response.status_code == 422
    assert "unpaired surrogate" in response.content.decode()
    nothing_written(assignment)


def test_a_lone_surrogate_in_a_snapshot_name_is_a_422(client, admin_user, project, media):
    client.force_login(admin_user)

    response = post_utf7(
        client,
        f"/projects/{project.pk}/snapshots/",
        {"kind": "sft", "name": LONE_UTF7, "test_fraction": "0.1", "aggregation": "majority",
         "min_agreement": "0.5", "format": "messages", "statuses": "submitted"},
    )  # fmt: skip

    assert response.status_code == 422
    assert "unpaired surrogate" in response.content.decode()
    assert not DatasetSnapshot.objects.exists()


def test_a_lone_surrogate_in_a_markdown_preview_is_a_422(client, annotator):
    client.force_login(annotator)

    response = post_utf7(client, "/markdown/preview/", {"text": f"**x**{LONE_UTF7}"})

    assert response.status_code == 422
    assert "unpaired surrogate" in response.content.decode()


def test_a_lone_surrogate_in_a_project_name_is_a_form_error(client, admin_user):
    client.force_login(admin_user)

    response = post_utf7(client, "/projects/new/", {"name": f"P{LONE_UTF7}", **PROJECT_FIELDS})

    assert response.status_code == 422
    assert not Project.objects.exists()


def test_a_lone_surrogate_in_a_query_string_is_a_422(client, admin_user, project):
    client.force_login(admin_user)

    response = client.get(
        f"/projects/{project.pk}/records/?q=%2B2AA-",
        headers={"Content-Type": "text/plain; charset=utf-7"},  # the charset GET decodes with
    )

    assert response.status_code == 422
    assert "q: Contains an unpaired surrogate" in response.content.decode()


def test_a_lone_surrogate_in_an_api_form_field_is_a_422(client, admin_user, project, media):
    content = '{"prompt": "Q?"}\n'
    body = (
        '--B\r\nContent-Disposition: form-data; name="file"; filename="p.jsonl"\r\n\r\n'
        f"{content}\r\n"
        f'--B\r\nContent-Disposition: form-data; name="source"\r\n\r\n{LONE_UTF7}\r\n--B--\r\n'
    )

    response = client.generic(
        "POST",
        f"/api/projects/{project.pk}/imports",
        body.encode(),
        content_type="multipart/form-data; boundary=B; charset=utf-7",
        headers=bearer(admin_user),
    )

    assert "unpaired surrogate" in assert_error(response, 422, "invalid")["message"]


def _api_post(client, path: str, body: dict, user):
    # json.dumps writes the lone surrogate as the escape \ud800, as a hostile client would.
    return client.post(
        f"/api{path}", json.dumps(body), content_type="application/json", headers=bearer(user)
    )


@pytest.mark.parametrize(
    ("kind", "endpoint", "body"),
    [
        (TaskKind.DEMONSTRATION, "demonstration", {"text": f"hi {LONE}"}),
        (TaskKind.PAIRWISE, "pairwise", {"choice": "tie", "rationale": LONE}),
        (TaskKind.PAIRWISE, "skip", {"reason": LONE}),
        (TaskKind.PAIRWISE, "pairwise", {"choice": "a", "labels": {"helpfulness": LONE}}),
    ],
    ids=["demonstration", "rationale", "skip-reason", "label"],
)
def test_a_lone_surrogate_in_an_api_text_is_a_422(client, annotator, project, kind, endpoint, body):
    assignment = lease(annotator, make_item(project, kind))

    response = _api_post(client, f"/assignments/{assignment.pk}/{endpoint}", body, annotator)

    assert_error(response, 422)
    nothing_written(assignment)


def test_a_lone_surrogate_in_an_api_snapshot_name_is_a_422(client, admin_user, project):
    response = _api_post(
        client, f"/projects/{project.pk}/snapshots", {"kind": "sft", "name": LONE}, admin_user
    )

    assert "unpaired surrogate" in assert_error(response, 422)["message"]
    assert not DatasetSnapshot.objects.exists()


@pytest.mark.parametrize(
    "row",
    [
        {"prompt": f"Q{LONE}", "chosen": "a", "rejected": "b"},
        {"prompt": "Q", "chosen": f"a{LONE}", "rejected": "b"},
        {"prompt": "Q", "chosen": "a", "rejected": "b", "chosen_model": LONE},
        {"prompt": "Q", "chosen": "a", "rejected": "b", "tags": [LONE]},
        {"prompt": "Q", "chosen": "a", "rejected": "b", "id": LONE},
        {"prompt": "Q", "completions": [{"text": "a", "model": LONE}, "b"]},
        {"prompt": "Q", "chosen": "a", "rejected": "b", "note": {"deep": [LONE]}},
        {"prompt": "Q", "chosen": "a", "rejected": "b", LONE: 1},
        {"prompt": "Q", "chosen": "a", "rejected": "b", "source_id": "a\x00b"},
    ],
    ids=["prompt", "chosen", "model", "tag", "id", "completion-model", "meta", "meta-key", "nul"],
)
def test_a_lone_surrogate_or_nul_anywhere_in_an_import_row_is_a_row_error(
    project, admin_user, tmp_path, row
):
    path = write_jsonl(tmp_path / "s.jsonl", [GOOD, json.dumps(row)])

    report = run_import(project, path)

    assert [e["row"] for e in report.errors] == [2], report.errors
    assert "surrogate" in report.errors[0]["message"] or "NUL" in report.errors[0]["message"]


# --- oversized bodies and absurd windows ---------------------------------------------------------


def test_a_3_mb_api_body_is_a_413_in_the_error_shape(client, admin_user, project):
    body = json.dumps({"kind": "sft", "name": "x" * 3_000_000})

    response = client.post(
        f"/api/projects/{project.pk}/snapshots",
        body,
        content_type="application/json",
        headers=bearer(admin_user),
    )

    assert_error(response, 413, "too_large")
    assert not DatasetSnapshot.objects.exists()


PAGINATED = [
    "/projects/{project_id}/items",
    "/projects/{project_id}/judgements",
    "/jobs",
    "/checkpoints",
    "/evals/runs",
]


@pytest.mark.parametrize("path", PAGINATED)
@pytest.mark.parametrize("param", ["offset", "limit"])
@pytest.mark.parametrize("value", [10**30, 2**63, -1])
def test_an_absurd_page_window_is_a_422(client, admin_user, project, path, param, value):
    response = client.get(
        f"/api{path.format(project_id=project.pk)}?{param}={value}", headers=bearer(admin_user)
    )

    assert_error(response, 422, "invalid_request")


@pytest.mark.parametrize("path", PAGINATED)
def test_the_largest_page_window_allowed_answers(client, admin_user, project, path):
    spec = client.get("/api/openapi.json").json()
    params = {p["name"]: p["schema"] for p in spec["paths"][f"/api{path}"]["get"]["parameters"]}
    assert {"maximum", "minimum"} <= set(params["offset"]) and "maximum" in params["limit"]

    url = f"/api{path.format(project_id=project.pk)}"
    window = f"?offset={params['offset']['maximum']}&limit={params['limit']['maximum']}"
    response = client.get(url + window, headers=bearer(admin_user))

    assert response.status_code == 200 and response.json()["items"] == []


# --- invisible text and look-alike names ---------------------------------------------------------


def test_a_demonstration_of_invisible_characters_is_a_422_in_the_form(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(f"/tasks/{assignment.pk}/submit/", {"text": INVISIBLE * 10})

    assert response.status_code == 422
    assert "Must not be empty." in response.content.decode()
    nothing_written(assignment)


def test_a_demonstration_of_invisible_characters_is_a_422_in_the_api(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)

    response = _api_post(
        client, f"/assignments/{assignment.pk}/demonstration", {"text": INVISIBLE}, annotator
    )

    assert "Must not be empty." in assert_error(response, 422)["message"]
    nothing_written(assignment)


def test_text_with_something_visible_among_invisible_characters_is_kept_as_written():
    assert clean_text(f"{INVISIBLE}x{INVISIBLE}") == f"{INVISIBLE}x{INVISIBLE}"


NFD_NAME = unicodedata.normalize("NFD", "Évaluation café")
NFC_NAME = unicodedata.normalize("NFC", "Évaluation café")


def test_project_names_are_stored_in_nfc(roles):
    project = services.project_create(name=NFD_NAME, task_kinds=["pairwise"])

    assert project.name == NFC_NAME


def test_names_that_look_the_same_are_duplicates(roles):
    services.project_create(name=NFC_NAME, task_kinds=["pairwise"])
    other = services.project_create(name="Other", task_kinds=["pairwise"])

    with pytest.raises(ValidationError, match="already exists"):
        services.project_create(name=NFD_NAME, task_kinds=["pairwise"])
    with pytest.raises(ValidationError, match="already exists"):
        services.project_update(project=other, name=NFD_NAME)
    assert Project.objects.filter(name__in=[NFC_NAME, NFD_NAME]).count() == 1


def test_the_project_form_refuses_a_look_alike_name(client, admin_user):
    services.project_create(name=NFC_NAME, task_kinds=["pairwise"])
    client.force_login(admin_user)

    response = client.post("/projects/new/", {"name": NFD_NAME, **PROJECT_FIELDS})

    assert response.status_code == 422
    assert "already exists" in response.content.decode()
    assert Project.objects.count() == 1


# --- request bodies that are not objects ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("null", "must be a JSON object"),
        ("[]", "must be a JSON object"),
        ('"skip"', "must be a JSON object"),
        ("5", "must be a JSON object"),
        (BOMB, "nested too deeply"),
        (b"{", "not JSON"),
        (b'{"reason": "x"', "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"PGCOPY\n\xff\r\n\x00", "not UTF-8"),
    ],
    ids=["null", "list", "string", "number", "nesting-bomb", "cut", "unclosed", "bom", "binary"],
)
def test_a_body_that_is_not_a_json_object_is_a_422_in_the_error_shape(
    client, annotator, pairwise_item, body, message
):
    assignment = lease(annotator, pairwise_item)

    response = client.post(
        f"/api/assignments/{assignment.pk}/skip",
        body,
        content_type="application/json",
        headers=bearer(annotator),
    )

    assert message in assert_error(response, 422, "invalid_json")["message"]
    nothing_written(assignment)


def test_the_openapi_documents_the_body_errors_of_every_operation_with_a_body(client):
    spec = client.get("/api/openapi.json").json()
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if "requestBody" in operation:
                assert {"413", "422"} <= set(operation["responses"]), (method, path)
