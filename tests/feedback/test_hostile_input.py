"""Hostile input as a category: markup injection, oversized and malformed text, forged choices,
other people's ids, absurd URLs and broken encodings. None of it may run, persist or 500."""

from __future__ import annotations

from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.conf import settings
from django.core.exceptions import ValidationError
from django.utils import timezone

from core.errors import NotYourTask
from feedback import services
from feedback.models import (
    Assignment,
    AssignmentStatus,
    Demonstration,
    JudgementRevision,
    PairwiseJudgement,
    RankingJudgement,
    TaskKind,
)
from tests.factories import ProjectFactory, UserFactory, make_item

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}
LIMIT = settings.VEREDICTO_MAX_TEXT_CHARS

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
JS_LINK = "[x](javascript:alert(1))"
PAYLOADS = [SCRIPT, IMG, JS_LINK]

# How each payload must look in the HTML when it is shown as text.
ESCAPED = {
    SCRIPT: "&lt;script&gt;alert(1)&lt;/script&gt;",
    IMG: "&lt;img src=x onerror=alert(1)&gt;",
    JS_LINK: "[x](javascript:alert(1))",
}


# --- helpers -----------------------------------------------------------------------------------


class _LiveMarkup(HTMLParser):
    """Collects anything in a page that a browser would execute."""

    URL_ATTRS = {"href", "src", "action", "formaction", "xlink:href", "data", "srcdoc"}

    def __init__(self, *, own_media: bool = False):
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self._in_script = False
        self._media = {"iframe", "object", "embed"} | (set() if own_media else {"img", "svg"})

    def handle_starttag(self, tag, attrs):
        if tag in self._media:
            self.problems.append(f"<{tag}> element")
        if tag == "script":
            self._in_script = True
        for name, value in attrs:
            if name.startswith("on"):
                self.problems.append(f"<{tag} {name}=...>")
            if name in self.URL_ATTRS and value and "javascript:" in value.lower().replace(" ", ""):
                self.problems.append(f"<{tag} {name}={value!r}>")

    def handle_endtag(self, tag):
        if tag == "script":
            self._in_script = False

    def handle_data(self, data):
        if self._in_script and "alert(1)" in data:
            self.problems.append(f"inline script: {data[:60]!r}")


class _Hrefs(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.urls: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.urls += [value or "" for name, value in attrs if name in {"href", "src"}]


def assert_inert(html: str, *, own_media: bool = False) -> None:
    """No payload is live. `own_media`: the page has its own icons (the Django admin)."""
    parser = _LiveMarkup(own_media=own_media)
    parser.feed(html)
    parser.close()
    assert parser.problems == [], parser.problems
    assert SCRIPT not in html
    assert IMG not in html


def lease(user, item) -> Assignment:
    assignment = services.task_next_for_annotator(
        project=item.project, annotator=user, kind=item.kind
    )
    assert assignment is not None and assignment.item_id == item.pk
    return assignment


def submit_url(assignment: Assignment) -> str:
    return f"/tasks/{assignment.pk}/submit/"


def nothing_written(assignment: Assignment) -> None:
    assert Demonstration.objects.count() == 0
    assert PairwiseJudgement.objects.count() == 0
    assert RankingJudgement.objects.count() == 0
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.LEASED
    assignment.item.refresh_from_db()
    assert assignment.item.submitted_count == 0


def hostile_project(payload: str):
    project = ProjectFactory(
        guidelines=f"Guideline: {payload}",
        label_schema=[{"name": "unsafe", "kind": "flag", "label": f"Unsafe {payload}"}],
    )
    prompt = services.prompt_create(
        project=project,
        system=f"System {payload}",
        messages=[
            {"role": "user", "content": f"Earlier {payload}"},
            {"role": "assistant", "content": f"Reply {payload}"},
            {"role": "user", "content": f"Question {payload}"},
        ],
    )
    return project, prompt


def hostile_item(project, prompt, kind: str):
    n = {"pairwise": 2, "ranking": 3, "demonstration": 0}[kind]
    completions = [
        services.completion_create(prompt=prompt, text=f"Completion {i} {prompt.system}")
        for i in range(n)
    ]
    return services.item_create(project=project, kind=kind, prompt=prompt, completions=completions)


# --- markup injection ----------------------------------------------------------------------------


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("kind", [TaskKind.PAIRWISE, TaskKind.RANKING, TaskKind.DEMONSTRATION])
@pytest.mark.parametrize("htmx", [False, True])
def test_task_screen_shows_hostile_prompt_completions_and_guidelines_as_text(
    client, annotator, payload, kind, htmx
):
    project, prompt = hostile_project(payload)
    item = hostile_item(project, prompt, kind)
    assignment = lease(annotator, item)
    client.force_login(annotator)

    response = client.get(f"/tasks/{assignment.pk}/", headers=HX if htmx else {})

    assert response.status_code == 200
    html = response.content.decode()
    assert_inert(html)
    # Shown, not silently dropped: system, three turns, guidelines (+ completions).
    expected = 5 + {"pairwise": 2, "ranking": 3, "demonstration": 0}[kind]
    assert html.count(ESCAPED[payload]) >= expected


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_demonstration_and_rationale_stay_text_when_reopened(client, annotator, payload):
    project, prompt = hostile_project(payload)
    demo = hostile_item(project, prompt, TaskKind.DEMONSTRATION)
    prompt2 = services.prompt_create(project=project, messages=f"Second {payload}")
    pair = hostile_item(project, prompt2, TaskKind.PAIRWISE)
    client.force_login(annotator)

    demo_assignment = lease(annotator, demo)
    assert client.post(submit_url(demo_assignment), {"text": payload}).status_code == 302
    pair_assignment = lease(annotator, pair)
    response = client.post(submit_url(pair_assignment), {"side": "tie", "rationale": payload})
    assert response.status_code == 302
    assert Demonstration.objects.get().text == payload  # stored verbatim, escaped on output
    assert PairwiseJudgement.objects.get().rationale == payload

    for assignment in (demo_assignment, pair_assignment):
        html = client.get(f"/tasks/{assignment.pk}/").content.decode()
        assert "Save changes" in html
        assert_inert(html)
        assert f"{ESCAPED[payload]}</textarea>" in html


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_text_in_rejected_submit_is_echoed_escaped(client, annotator, payload):
    project, prompt = hostile_project(payload)
    pair = hostile_item(project, prompt, TaskKind.PAIRWISE)
    assignment = lease(annotator, pair)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"side": "left", "rationale": payload})

    assert response.status_code == 422
    assert_inert(response.content.decode())
    nothing_written(assignment)


def test_hostile_label_value_is_echoed_escaped_in_the_422(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment), {"text": "ok", "label_helpfulness": f'"><b {IMG}{SCRIPT}'}
    )

    assert response.status_code == 422
    html = response.content.decode()
    assert_inert(html)
    assert 'value="&quot;&gt;&lt;b ' in html
    nothing_written(assignment)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_history_shows_hostile_prompt_and_demonstration_as_text(client, annotator, payload):
    project, prompt = hostile_project(payload)
    project.name = f"Proj {payload}"
    project.save()
    demo = hostile_item(project, prompt, TaskKind.DEMONSTRATION)
    assignment = lease(annotator, demo)
    services.demonstration_submit(
        assignment_id=assignment.pk, annotator=annotator, text=f"Demo {payload}"
    )
    client.force_login(annotator)

    response = client.get("/history/")

    assert response.status_code == 200
    html = response.content.decode()
    assert_inert(html)
    assert f"Demo {ESCAPED[payload]}" in html
    assert f"Question {ESCAPED[payload]}" in html  # the prompt preview
    assert f"Proj {ESCAPED[payload]}" in html


@pytest.mark.parametrize("payload", PAYLOADS)
def test_progress_page_shows_hostile_skip_reasons_and_prompts_as_text(
    client, annotator, other_annotator, admin_user, payload
):
    project, prompt = hostile_project(payload)
    project.name = f"Proj {payload}"
    project.save()
    item = hostile_item(project, prompt, TaskKind.DEMONSTRATION)
    for user in (annotator, other_annotator):
        assignment = lease(user, item)
        client.force_login(user)
        client.post(f"/tasks/{assignment.pk}/skip/", {"reason": f"Skip {payload}"})
    assert Assignment.objects.get(annotator=annotator).skip_reason == f"Skip {payload}"
    hostile_name = UserFactory(username=f"u{payload}", roles=["annotator"])
    services.assignment_skip(
        assignment_id=Assignment.objects.create(
            item=item, annotator=hostile_name, expires_at=timezone.now() + timedelta(minutes=5)
        ).pk,
        annotator=hostile_name,
        reason=payload,
    )
    client.force_login(admin_user)

    response = client.get(f"/projects/{project.pk}/progress/")

    assert response.status_code == 200
    html = response.content.decode()
    assert_inert(html)
    assert f"Skip {ESCAPED[payload]}" in html
    assert f"Question {ESCAPED[payload]}" in html
    assert f"Proj {ESCAPED[payload]}" in html


@pytest.mark.parametrize("payload", PAYLOADS)
def test_home_and_admin_show_hostile_names_and_text_as_text(client, admin_user, payload):
    project, prompt = hostile_project(payload)
    project.name = f"Proj {payload}"
    project.description = f"Desc {payload}"
    project.save()
    hostile_item(project, prompt, TaskKind.PAIRWISE)
    client.force_login(admin_user)

    response = client.get("/")
    assert response.status_code == 200
    assert_inert(response.content.decode())
    assert f"Proj {ESCAPED[payload]}" in response.content.decode()
    for model in ["project", "prompt", "completion", "item"]:
        response = client.get(f"/admin/feedback/{model}/")
        assert response.status_code == 200, model
        assert_inert(response.content.decode(), own_media=True)


@pytest.mark.parametrize("payload", PAYLOADS)
def test_markdown_preview_never_returns_live_markup(client, annotator, payload):
    client.force_login(annotator)

    response = client.post("/markdown/preview/", {"text": f"Hello {payload} **bold**"})

    assert response.status_code == 200
    html = response.content.decode()
    assert_inert(html)
    assert ESCAPED[payload] in html
    assert "<strong>bold</strong>" in html


@pytest.mark.parametrize(
    "text",
    [
        '<a href="javascript:alert(1)">x</a>',
        "[x](JavaScript:alert(1))",
        "[x](  javascript:alert(1))",
        "[x](java&#115;cript:alert(1))",
        "[x](data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==)",
        "<javascript:alert(1)>",
        "![x](javascript:alert(1))",
        '<svg onload="alert(1)">',
        '<a href="x" onclick="alert(1)">x</a>',
        "[x](vbscript:msgbox(1))",
    ],
)
def test_markdown_preview_neutralises_link_and_attribute_tricks(client, annotator, text):
    client.force_login(annotator)

    response = client.post("/markdown/preview/", {"text": text})

    assert response.status_code == 200
    html = response.content.decode()
    assert_inert(html)
    parser = _Hrefs()
    parser.feed(html)
    for url in parser.urls:
        assert url.lower().startswith(("http:", "https:", "mailto:")) or ":" not in url, url


def test_markdown_links_get_safe_rel(client, annotator):
    client.force_login(annotator)

    html = client.post("/markdown/preview/", {"text": "[ok](https://example.org)"}).content
    html = html.decode()

    assert 'href="https://example.org"' in html
    assert 'rel="noopener noreferrer nofollow"' in html


# --- oversized text ----------------------------------------------------------------------------


def test_oversized_demonstration_is_422_with_clear_error_and_nothing_written(
    client, annotator, demo_item
):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"text": "x" * (LIMIT + 1)})

    assert response.status_code == 422
    html = response.content.decode()
    assert f"the limit is {LIMIT:,}" in html or f"at most {LIMIT} characters" in html
    nothing_written(assignment)


def test_demonstration_at_the_limit_is_accepted(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"text": "x" * LIMIT})

    assert response.status_code == 302
    assert len(Demonstration.objects.get().text) == LIMIT


def test_oversized_pairwise_rationale_is_422_with_clear_error(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"side": "tie", "rationale": "r" * (LIMIT + 1)})

    assert response.status_code == 422
    assert f"the limit is {LIMIT:,}" in response.content.decode()
    nothing_written(assignment)


def test_oversized_ranking_rationale_is_422_with_clear_error(client, annotator, ranking_item):
    assignment = lease(annotator, ranking_item)
    ranks = {f"rank_{cid}": n for n, cid in enumerate(assignment.display_order, start=1)}
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {**ranks, "rationale": "r" * (LIMIT + 1)})

    assert response.status_code == 422
    # The annotator must be told why: the ranking screen has to show the rationale error.
    assert f"the limit is {LIMIT:,}" in response.content.decode()
    nothing_written(assignment)


def test_oversized_edit_is_422_and_keeps_the_original(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    services.demonstration_submit(assignment_id=assignment.pk, annotator=annotator, text="orig")
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"edit": "1", "text": "y" * (LIMIT + 1)})

    assert response.status_code == 422
    assert Demonstration.objects.get().text == "orig"
    assert not JudgementRevision.objects.exists()


def test_oversized_skip_reason_does_not_500_or_store_more_than_500_chars(
    client, annotator, pairwise_item
):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(f"/tasks/{assignment.pk}/skip/", {"reason": "z" * (LIMIT + 1)})

    assert response.status_code < 500
    assignment.refresh_from_db()
    assert len(assignment.skip_reason) <= 500


def test_oversized_markdown_preview_is_truncated_not_rejected(client, annotator):
    client.force_login(annotator)

    response = client.post("/markdown/preview/", {"text": "a" * (LIMIT + 5000)})

    assert response.status_code == 200
    assert response.content.decode().count("a") <= LIMIT + 10


# --- blank and NUL text ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   ", "\n\t \r\n", "\u00a0\u2003"])
def test_blank_demonstration_is_422_and_nothing_written(client, annotator, demo_item, text):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"text": text})

    assert response.status_code == 422
    html = response.content.decode()
    assert "Write the reply before submitting." in html or "Must not be empty." in html
    nothing_written(assignment)


def test_missing_demonstration_field_is_422(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {})

    assert response.status_code == 422
    assert "Write the reply before submitting." in response.content.decode()
    nothing_written(assignment)


def test_editing_demonstration_to_whitespace_is_refused(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    services.demonstration_submit(assignment_id=assignment.pk, annotator=annotator, text="orig")
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"edit": "1", "text": "    "})

    assert response.status_code == 422
    assert Demonstration.objects.get().text == "orig"


def test_nul_in_demonstration_is_a_clean_422(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"text": "before\x00after"})

    assert response.status_code == 422
    assert "Null characters are not allowed." in response.content.decode()
    nothing_written(assignment)


def test_nul_in_rationale_is_a_clean_422(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"side": "tie", "rationale": "a\x00b"})

    assert response.status_code == 422
    assert "Null characters are not allowed." in response.content.decode()
    nothing_written(assignment)


def test_nul_in_label_value_is_a_clean_422(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"text": "ok", "label_helpfulness": "3\x00"})

    assert response.status_code == 422
    nothing_written(assignment)


def test_nul_in_skip_reason_is_not_stored_and_does_not_500(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(f"/tasks/{assignment.pk}/skip/", {"reason": "bad\x00reason"})

    assert response.status_code < 500
    assignment.refresh_from_db()
    assert "\x00" not in assignment.skip_reason


def test_nul_in_markdown_preview_does_not_500(client, annotator):
    client.force_login(annotator)

    response = client.post("/markdown/preview/", {"text": "a\x00b"})

    assert response.status_code == 200
    assert b"\x00" not in response.content


def test_nul_in_login_form_does_not_500(client, annotator):
    response = client.post("/accounts/login/", {"username": "ann\x00", "password": "pw"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session


# --- forged choices ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        {"side": "up"},
        {"side": "a"},
        {"side": "LEFT", "strength": "clear"},
        {"side": "left", "strength": "huge"},
        {"side": "tie", "strength": "huge"},
        {"side": ""},
        {},
    ],
    ids=[
        "side-up",
        "side-canonical-a",
        "side-uppercase",
        "strength-huge",
        "tie-huge",
        "blank",
        "none",
    ],
)
def test_forged_pairwise_values_are_422_and_nothing_written(client, annotator, pairwise_item, data):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), data)

    assert response.status_code == 422
    nothing_written(assignment)


@pytest.mark.parametrize(
    "forge",
    ["zero", "too-high", "negative", "text", "float", "huge", "missing-one", "missing-all"],
)
def test_forged_ranks_are_422_and_nothing_written(client, annotator, ranking_item, forge):
    assignment = lease(annotator, ranking_item)
    ids = assignment.display_order
    data = {f"rank_{cid}": n for n, cid in enumerate(ids, start=1)}
    first = f"rank_{ids[0]}"
    if forge == "missing-one":
        del data[first]
    elif forge == "missing-all":
        data = {}
    else:
        data[first] = {
            "zero": "0",
            "too-high": str(len(ids) + 1),
            "negative": "-1",
            "text": "best",
            "float": "1.5",
            "huge": "9" * 40,
        }[forge]
    client.force_login(annotator)

    response = client.post(submit_url(assignment), data)

    assert response.status_code == 422
    nothing_written(assignment)


def test_rank_for_a_completion_not_in_the_item_is_ignored(client, annotator, ranking_item):
    assignment = lease(annotator, ranking_item)
    ids = assignment.display_order
    data = {f"rank_{cid}": n for n, cid in enumerate(ids, start=1)}
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {**data, "rank_999999": "1"})

    assert response.status_code == 302
    assert RankingJudgement.objects.get().ranking == [[cid] for cid in ids]


@pytest.mark.parametrize("value", ["abc", "1e3", "4.5", "9" * 40, "--1"])
def test_non_integer_likert_is_422_and_nothing_written(client, annotator, demo_item, value):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"text": "ok", "label_helpfulness": value})

    assert response.status_code == 422
    assert "helpfulness must be" in response.content.decode()
    nothing_written(assignment)


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400", "-5", "soon"])
def test_hostile_seconds_spent_never_stores_nonsense(client, annotator, demo_item, value):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"text": "ok", "seconds_spent": value})

    assert response.status_code in (302, 422)
    for demonstration in Demonstration.objects.all():
        assert 0 <= demonstration.seconds_spent <= 24 * 3600


def test_submitting_to_a_task_of_another_kind_via_forged_fields_is_refused(
    client, annotator, demo_item
):
    """Pairwise fields posted to a demonstration task do not create a pairwise judgement."""
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(submit_url(assignment), {"side": "left", "strength": "clear"})

    assert response.status_code == 422
    nothing_written(assignment)


# --- other people's ids ------------------------------------------------------------------------


@pytest.fixture
def someone_elses(other_annotator, pairwise_item):
    return lease(other_annotator, pairwise_item)


def test_someone_elses_task_is_404(client, annotator, someone_elses):
    client.force_login(annotator)
    assert client.get(f"/tasks/{someone_elses.pk}/").status_code == 404


@pytest.mark.parametrize("htmx", [False, True])
def test_submitting_someone_elses_task_is_404_and_nothing_written(
    client, annotator, someone_elses, htmx
):
    client.force_login(annotator)

    response = client.post(
        submit_url(someone_elses),
        {"side": "left", "strength": "clear"},
        headers=HX if htmx else {},
    )

    assert response.status_code == 404
    nothing_written(someone_elses)
    assert not Assignment.objects.filter(annotator__username="ann").exists()


def test_skipping_someone_elses_task_is_404_and_nothing_changes(client, annotator, someone_elses):
    client.force_login(annotator)

    response = client.post(f"/tasks/{someone_elses.pk}/skip/", {"reason": "mine now"})

    assert response.status_code == 404
    someone_elses.refresh_from_db()
    assert someone_elses.status == AssignmentStatus.LEASED
    assert someone_elses.skip_reason == ""


def test_editing_someone_elses_submitted_judgement_is_404(
    client, annotator, other_annotator, demo_item
):
    assignment = lease(other_annotator, demo_item)
    services.demonstration_submit(
        assignment_id=assignment.pk, annotator=other_annotator, text="theirs"
    )
    client.force_login(annotator)

    assert client.get(f"/tasks/{assignment.pk}/").status_code == 404
    assert client.post(submit_url(assignment), {"text": "mine"}).status_code == 404
    assert Demonstration.objects.get().text == "theirs"
    assert not JudgementRevision.objects.exists()


def test_missing_and_foreign_ids_look_the_same(client, annotator, someone_elses):
    client.force_login(annotator)

    foreign = client.get(f"/tasks/{someone_elses.pk}/")
    missing = client.get(f"/tasks/{someone_elses.pk + 1000}/")

    assert foreign.status_code == missing.status_code == 404


def test_services_refuse_someone_elses_assignment(annotator, someone_elses):
    with pytest.raises(NotYourTask, match="not assigned to you"):
        services.pairwise_submit(
            assignment_id=someone_elses.pk, annotator=annotator, choice="a", strength="clear"
        )
    with pytest.raises(NotYourTask, match="not assigned to you"):
        services.assignment_skip(assignment_id=someone_elses.pk, annotator=annotator)
    nothing_written(someone_elses)


# --- absurd URLs -------------------------------------------------------------------------------

HUGE = "9" * 30
BIGINT_PLUS_ONE = str(2**63)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", f"/tasks/{HUGE}/"),
        ("get", f"/tasks/{BIGINT_PLUS_ONE}/"),
        ("post", f"/tasks/{HUGE}/submit/"),
        ("post", f"/tasks/{BIGINT_PLUS_ONE}/submit/"),
        ("post", f"/tasks/{HUGE}/skip/"),
        ("get", f"/projects/{HUGE}/work/"),
        ("get", f"/projects/{BIGINT_PLUS_ONE}/work/"),
        ("get", f"/projects/{HUGE}/progress/"),
        ("get", "/tasks/abc/"),
        ("get", "/tasks/-1/"),
        ("get", "/tasks/1.5/"),
        ("get", "/tasks/%00/"),
        ("get", "/tasks/%FF/"),
        ("get", "/tasks/1%00/"),
        ("post", "/tasks/abc/submit/"),
        ("post", "/tasks/0x10/skip/"),
        ("get", "/projects/abc/work/"),
        ("get", "/projects/%E2%80%8B1/progress/"),
        ("get", "/projects/%D9%A1/work/"),  # Arabic-Indic digit one
    ],
)
def test_absurd_ids_in_urls_are_404_not_500(client, admin_user, method, path):
    client.force_login(admin_user)  # admin: passes every role check, so the id is what fails

    response = getattr(client, method)(path)

    assert response.status_code == 404


def test_admin_change_page_with_absurd_id_does_not_500(client, admin_user):
    client.force_login(admin_user)

    for path in [f"/admin/feedback/item/{HUGE}/change/", "/admin/feedback/item/abc/change/"]:
        response = client.get(path)
        assert response.status_code in (302, 404), path


# --- broken encodings --------------------------------------------------------------------------

BAD_UTF8 = b"text=%FF%FE%C3%28hello%ED%A0%80&label_helpfulness=%FF"


def test_invalid_utf8_urlencoded_submit_does_not_500(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.generic(
        "POST",
        submit_url(assignment),
        BAD_UTF8,
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code in (302, 422)


def test_raw_invalid_utf8_bytes_in_body_do_not_500(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.generic(
        "POST",
        submit_url(assignment),
        b"text=\xff\xfe\xc3(hello\xed\xa0\x80",
        content_type="application/x-www-form-urlencoded; charset=utf-8",
    )

    assert response.status_code in (302, 422)
    for demonstration in Demonstration.objects.all():
        demonstration.text.encode("utf-8")  # whatever was stored is valid text


def test_invalid_utf8_multipart_submit_does_not_500(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)
    boundary = "XyZ"
    body = (
        b"--XyZ\r\n"
        b'Content-Disposition: form-data; name="text"\r\n\r\n'
        b"\xff\xfe broken \xc3(\r\n"
        b"--XyZ--\r\n"
    )

    response = client.generic(
        "POST",
        submit_url(assignment),
        body,
        content_type=f"multipart/form-data; boundary={boundary}",
    )

    assert response.status_code in (302, 422)


def test_unknown_charset_does_not_500(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.generic(
        "POST",
        submit_url(assignment),
        b"text=hello",
        content_type="application/x-www-form-urlencoded; charset=no-such-charset",
    )

    assert response.status_code in (302, 400, 422)


def test_invalid_utf8_markdown_preview_does_not_500(client, annotator):
    client.force_login(annotator)

    response = client.generic(
        "POST",
        "/markdown/preview/",
        b"text=\xff\xfe%FF**x**",
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 200
    assert "<strong>x</strong>" in response.content.decode()


def test_invalid_utf8_skip_reason_does_not_500(client, annotator, pairwise_item):
    assignment = lease(annotator, pairwise_item)
    client.force_login(annotator)

    response = client.generic(
        "POST",
        f"/tasks/{assignment.pk}/skip/",
        b"reason=\xff\xfe",
        content_type="application/x-www-form-urlencoded",
    )

    assert response.status_code == 302
    assignment.refresh_from_db()
    assert assignment.status == AssignmentStatus.SKIPPED


def test_json_body_to_a_form_endpoint_is_a_clean_422(client, annotator, demo_item):
    assignment = lease(annotator, demo_item)
    client.force_login(annotator)

    response = client.post(
        submit_url(assignment), '{"text": "hi"}', content_type="application/json"
    )

    assert response.status_code == 422
    nothing_written(assignment)


# --- services.clean_messages -------------------------------------------------------------------


def test_clean_messages_accepts_a_conversation_ending_with_user():
    system, messages = services.clean_messages(
        [
            {"role": "system", "content": "Be terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello"},
            {"role": "user", "content": "Bye?"},
        ]
    )
    assert system == "Be terse."
    assert [m["role"] for m in messages] == ["user", "assistant", "user"]


@pytest.mark.parametrize("role", ["tool", "developer", "User", "", None, 1])
def test_clean_messages_rejects_unknown_roles(role):
    with pytest.raises(ValidationError, match="unknown role"):
        services.clean_messages([{"role": role, "content": "Hi"}])


@pytest.mark.parametrize(
    "messages",
    [
        "Hi",
        {"role": "user", "content": "Hi"},
        ({"role": "user", "content": "Hi"},),
        None,
        [],
        42,
    ],
    ids=["string", "dict", "tuple", "none", "empty", "int"],
)
def test_clean_messages_rejects_non_list_or_empty(messages):
    with pytest.raises(ValidationError, match="non-empty list"):
        services.clean_messages(messages)


@pytest.mark.parametrize(
    "messages",
    [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}],
        [{"role": "assistant", "content": "Hello"}],
        [{"role": "system", "content": "Only a system message"}],
    ],
    ids=["ends-with-assistant", "only-assistant", "only-system"],
)
def test_clean_messages_rejects_conversation_not_ending_with_user(messages):
    with pytest.raises(ValidationError, match="must end with a user message"):
        services.clean_messages(messages)


@pytest.mark.parametrize(
    "message",
    [
        {"role": "user", "content": "Hi", "name": "mallory"},
        {"role": "user", "content": "Hi", "tool_calls": []},
        {"role": "user"},
        "user: Hi",
        ["user", "Hi"],
    ],
    ids=["extra-name", "extra-tool-calls", "no-content", "string", "list"],
)
def test_clean_messages_rejects_extra_keys_and_malformed_messages(message):
    with pytest.raises(ValidationError):
        services.clean_messages([message])


def test_clean_messages_rejects_second_or_late_system_message():
    with pytest.raises(ValidationError, match="Only one system message"):
        services.clean_messages(
            [{"role": "user", "content": "Hi"}, {"role": "system", "content": "Late"}]
        )
    with pytest.raises(ValidationError, match="Only one system message"):
        services.clean_messages(
            [{"role": "system", "content": "S"}, {"role": "user", "content": "Hi"}], "also"
        )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("x" * (LIMIT + 1), "the limit is"),
        ("a\x00b", "NUL"),
        ("   ", "Must not be empty."),
        (123, "Must be text."),
    ],
)
def test_clean_messages_checks_every_content(content, message):
    with pytest.raises(ValidationError, match=message):
        services.clean_messages([{"role": "user", "content": content}])


def test_clean_messages_rejects_too_many_messages():
    turns = [{"role": "user", "content": "q"}] * 65
    with pytest.raises(ValidationError, match="At most 64 messages"):
        services.clean_messages(turns)


def test_hostile_prompt_is_refused_before_it_reaches_any_screen(project):
    with pytest.raises(ValidationError):
        services.prompt_create(
            project=project, messages=[{"role": "user", "content": "x", "onerror": "alert(1)"}]
        )
    with pytest.raises(ValidationError):
        services.completion_create(
            prompt=make_item(project, TaskKind.DEMONSTRATION).prompt, text="a\x00b"
        )
