"""The records browser: search, filters in the URL, paging, one record in full, bulk actions."""

import pytest
from django.db import connection

from feedback import services
from feedback.models import Item, Origin, Prompt, TaskKind
from feedback.selectors.records import RecordFilters, records_for_project
from tests.factories import make_item, make_prompt


def _judge(item, user, side="left", origin=Origin.HUMAN):
    assignment = services.task_next_for_annotator(project=item.project, annotator=user)
    assert assignment.item_id == item.pk
    services.pairwise_submit(
        assignment_id=assignment.pk,
        annotator=user,
        choice={"left": "a", "right": "b"}[side],
        strength="clear",
        origin=origin,
    )


@pytest.fixture
def records(project):
    """Three pairwise items about cats, dogs and a held-out prompt; one demonstration."""
    cats = make_item(project, TaskKind.PAIRWISE, texts=["Cats purr when content.", "No idea."])
    cats.prompt.messages = [{"role": "user", "content": "Why do cats purr so loudly?"}]
    cats.prompt.save()
    dogs = make_item(project, TaskKind.PAIRWISE, texts=["Dogs bark at strangers.", "Woof."])
    held = make_item(project, TaskKind.PAIRWISE)
    Prompt.objects.filter(pk=held.prompt_id).update(split="test")
    demo = make_item(project, TaskKind.DEMONSTRATION)
    return {"cats": cats, "dogs": dogs, "held": held, "demo": demo}


def _found(project, **filters) -> set[int]:
    return {
        item.pk for item in records_for_project(project=project, filters=RecordFilters(**filters))
    }


def test_search_finds_words_in_prompts_and_in_replies(project, records):
    # Stemming on PostgreSQL: "loud" finds "loudly"; the SQLite fallback matches substrings.
    assert _found(project, q="loud") == {records["cats"].pk}
    assert _found(project, q="stranger") == {records["dogs"].pk}
    assert _found(project, q="giraffe") == set()


def test_search_does_not_match_the_json_keys(project, records):
    # PostgreSQL's full-text search (make test's database; this file is not in the SQLite run,
    # whose substring fallback matches over the stored JSON, keys included).
    assert _found(project, q="role") == set()
    assert _found(project, q="user") == set()


def test_filters_by_split_kind_status_origin_annotator_and_gold(
    project, records, annotator, other_annotator
):
    _judge(records["cats"], annotator)
    _judge(records["dogs"], other_annotator, origin=Origin.SIMULATED)
    Item.objects.filter(pk=records["held"].pk).update(is_gold=True)
    assert _found(project, split="test") == {records["held"].pk}
    assert _found(project, kind="demonstration") == {records["demo"].pk}
    assert _found(project, status="complete") == {records["cats"].pk, records["dogs"].pk}
    assert _found(project, status="open") == {records["held"].pk, records["demo"].pk}
    assert _found(project, origin="simulated") == {records["dogs"].pk}
    assert _found(project, origin="human") == {records["cats"].pk}
    assert _found(project, annotator="ann") == {records["cats"].pk}
    assert _found(project, gold="yes") == {records["held"].pk}
    assert _found(project, split="train", kind="pairwise", status="open") == set()


def test_unknown_filter_values_are_dropped_not_refused():
    from django.http import QueryDict

    filters = RecordFilters.from_query(QueryDict("kind=bogus&split=test&q=+hi+"))
    assert (filters.kind, filters.split, filters.q) == ("", "test", "hi")


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_search_uses_the_gin_indexes(project, records):
    from django.contrib.postgres.search import SearchQuery

    from feedback.selectors.records import completion_search_vector, prompt_search_vector

    query = SearchQuery("cats", config="english", search_type="websearch")
    prompts = Prompt.objects.annotate(found=prompt_search_vector()).filter(found=query)
    from feedback.models import Completion

    completions = Completion.objects.annotate(found=completion_search_vector()).filter(found=query)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        assert "feedback_prompt_text_search" in prompts.explain()
        assert "feedback_completion_text_search" in completions.explain()


def test_records_page_lists_filters_in_the_url_and_pages(client, reviewer, project, records):
    for n in range(30):
        make_item(project, TaskKind.PAIRWISE, texts=[f"Reply {n} about ferrets", "other"])
    client.force_login(reviewer)
    page = client.get(f"/projects/{project.pk}/records/?q=ferrets&kind=pairwise")
    html = page.content.decode()
    assert page.status_code == 200
    assert "30 records match" in html and "page 1 of 2" in html
    assert 'value="ferrets"' in html
    assert f"/projects/{project.pk}/records/?q=ferrets&amp;kind=pairwise&amp;page=2" in html
    second = client.get(f"/projects/{project.pk}/records/?q=ferrets&kind=pairwise&page=2")
    assert "page 2 of 2" in second.content.decode()
    # Reviewers read; only admins get the bulk actions.
    assert 'name="action"' not in html


def test_htmx_filter_gets_only_the_results(client, admin_user, project, records):
    client.force_login(admin_user)
    page = client.get(f"/projects/{project.pk}/records/?split=test", headers={"HX-Request": "true"})
    html = page.content.decode()
    assert html.lstrip().startswith('<section id="results">')
    assert f"#{records['held'].pk}" in html and f"#{records['cats'].pk}<" not in html


def test_annotators_may_not_browse_records(client, annotator, project, records):
    client.force_login(annotator)
    assert client.get(f"/projects/{project.pk}/records/").status_code == 403
    assert client.get(f"/records/{records['cats'].pk}/").status_code == 403


def test_record_page_shows_prompt_replies_and_judgements(client, reviewer, annotator, records):
    _judge(records["cats"], annotator)
    client.force_login(reviewer)
    html = client.get(f"/records/{records['cats'].pk}/?q=cats").content.decode()
    assert "Why do cats purr so loudly?" in html
    assert "Cats purr when content." in html and "No idea." in html
    assert "ann" in html and "Human annotator" in html
    assert "records/?q=cats" in html  # back to the same search


def test_bulk_mark_gold_uses_the_agreed_answer(client, admin_user, annotator, project, records):
    _judge(records["cats"], annotator)
    client.force_login(admin_user)
    ids = [records["cats"].pk, records["dogs"].pk, records["demo"].pk]
    page = client.post(
        f"/projects/{project.pk}/records/bulk/",
        {"action": "gold", "item": ids, "back": "?kind=pairwise"},
    )
    assert page.status_code == 302 and page["Location"].endswith("/records/?kind=pairwise")
    records["cats"].refresh_from_db()
    assert records["cats"].is_gold and records["cats"].gold_answer["choice"] in ("a", "b")
    assert not Item.objects.filter(pk__in=ids[1:], is_gold=True).exists()


def test_bulk_split_moves_the_prompt(client, admin_user, project, records):
    client.force_login(admin_user)
    client.post(
        f"/projects/{project.pk}/records/bulk/",
        {"action": "split", "split": "test", "item": [records["cats"].pk]},
    )
    assert Prompt.objects.get(pk=records["cats"].prompt_id).split == "test"


def test_bulk_delete_asks_first_then_deletes(client, admin_user, project, records):
    client.force_login(admin_user)
    ids = [records["cats"].pk, records["dogs"].pk]
    url = f"/projects/{project.pk}/records/bulk/"
    confirm = client.post(url, {"action": "delete", "item": ids, "back": "?q=x"})
    assert confirm.status_code == 200
    assert "Delete 2 records?" in confirm.content.decode()
    assert Item.objects.filter(pk__in=ids).count() == 2
    done = client.post(url, {"action": "delete", "item": ids, "confirm": "1", "back": "?q=x"})
    assert done["Location"].endswith("/records/?q=x")
    assert not Item.objects.filter(pk__in=ids).exists()


def test_bulk_actions_are_for_admins_and_stay_in_the_project(
    client, reviewer, admin_user, project, records
):
    client.force_login(reviewer)
    url = f"/projects/{project.pk}/records/bulk/"
    assert client.post(url, {"action": "delete", "item": [1], "confirm": "1"}).status_code == 403
    other = services.project_create(name="Other", task_kinds=["pairwise"])
    stranger = make_item(other, TaskKind.PAIRWISE)
    client.force_login(admin_user)
    client.post(url, {"action": "delete", "item": [stranger.pk], "confirm": "1"})
    assert Item.objects.filter(pk=stranger.pk).exists()


def test_back_parameter_cannot_redirect_elsewhere(client, admin_user, project, records):
    client.force_login(admin_user)
    page = client.post(
        f"/projects/{project.pk}/records/bulk/",
        {"action": "split", "split": "train", "item": [records["cats"].pk],
         "back": "//evil.example/?q=x"},
    )  # fmt: skip
    assert page["Location"].startswith(f"/projects/{project.pk}/records/")


def test_prompt_text_is_escaped(client, reviewer, project):
    make_prompt(project, "<script>alert(1)</script> hello")
    item = Item.objects.create(project=project, kind="demonstration", prompt=Prompt.objects.last())
    client.force_login(reviewer)
    html = client.get(f"/projects/{project.pk}/records/").content.decode()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;" in html
    assert "<script>alert(1)" not in client.get(f"/records/{item.pk}/").content.decode()
