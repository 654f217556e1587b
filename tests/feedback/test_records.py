"""The records browser: search, filters in the URL, paging, one record in full, bulk actions."""

import json

import pytest
from django.db import connection

from feedback import services
from feedback.models import Item, Origin, Prompt, TaskKind
from feedback.selectors import records as record_selectors
from feedback.selectors.records import RecordFilters, records_for_project, records_page
from tests.factories import ProjectFactory, make_item, make_prompt


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


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_search_does_not_match_the_json_keys(project, records):
    # PostgreSQL's full-text search only: SQLite's substring fallback matches the stored JSON,
    # keys included.
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
def test_search_uses_the_gin_indexes_on_the_stored_vectors(project, records):
    from django.contrib.postgres.search import SearchQuery

    from feedback.models import Completion
    from feedback.selectors.records import SearchDocument

    query = SearchQuery("cats", config="english", search_type="websearch")
    prompts = record_selectors.matching(Prompt, query)
    completions = record_selectors.matching(Completion, query)
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL enable_seqscan = off")
        # The stored vectors through their GIN index, and the rows an import left without
        # one through the partial index of those (empty here).
        for plan, table in ((prompts.explain(), "prompt"), (completions.explain(), "completion")):
            assert f"Bitmap Index Scan on feedback_{table}_search " in plan
            assert f"Bitmap Index Scan on feedback_{table}_search_pending" in plan
            # The GIN index leaves out the rows still pending: an import's NULLs cost nothing.
            cursor.execute(
                "SELECT indexdef FROM pg_indexes WHERE indexname = %s", [f"feedback_{table}_search"]
            )
            assert cursor.fetchone()[0].endswith("WHERE (search IS NOT NULL)")
    assert list(prompts) == [records["cats"].prompt]
    assert not Prompt.objects.alias(found=SearchDocument()).filter(found__isnull=True).exists()


def _vectors(model, ids):
    table = model._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, search::text FROM {table} WHERE id = ANY(%s)", [list(ids)])
        return dict(cursor.fetchall())


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_an_import_leaves_its_vectors_for_later_and_search_finds_its_rows_meanwhile(
    client, admin_user, project, tmp_path
):
    from feedback.models import Completion
    from feedback.services import search_index_pending, search_pending

    path = tmp_path / "otters.jsonl"
    rows = [
        {"prompt": "Why do otters hold hands?", "chosen": "So they do not drift apart asleep.",
         "rejected": "No idea."},
        {"prompt": "Name a sea mammal.", "chosen": "The sea otter.", "rejected": "A trout."},
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert services.import_file(project=project, path=path).ok
    imported = Item.objects.filter(project=project).order_by("pk")
    first, second = imported
    assert search_pending() == 2 + 4  # the prompts and the replies, not indexed yet

    def searches():
        return {
            "otter": _found(project, q="otter"),  # stemmed: "otters" in a prompt
            "drifting": _found(project, q="drifting"),  # in a reply
            "phrase": _found(project, q='"drift apart"'),
            "minus": _found(project, q="otter -trout"),
            "keys": _found(project, q="role"),  # JSON keys are not text
        }

    expected = {
        "otter": {first.pk, second.pk},
        "drifting": {first.pk},
        "phrase": {first.pk},
        "minus": {first.pk, second.pk},  # each text on its own: no reply has both
        "keys": set(),
    }
    assert searches() == expected  # found meanwhile, by computing their vectors
    client.force_login(admin_user)
    url = f"/projects/{project.pk}/records/"
    catching_up = "Search is indexing a recent import"
    assert catching_up in client.get(url, {"q": "otter"}).content.decode()
    assert catching_up not in client.get(url).content.decode()  # no search, nothing to say

    assert search_index_pending(batch_size=3) == 6  # more than one batch per table
    assert search_pending() == 0 and search_index_pending() == 0
    assert searches() == expected  # found now through the stored vectors
    page = client.get(url, {"q": "otter"}).content.decode()
    assert "2 records match" in page and catching_up not in page

    # The indexer's vectors are the ones a row written outside an import gets (the trigger).
    again = make_prompt(ProjectFactory(), first.prompt.messages)
    reply = Completion.objects.create(prompt=again, text="So they do not drift apart asleep.")
    ours = Completion.objects.get(prompt=first.prompt, text=reply.text)
    assert (
        _vectors(Prompt, [first.prompt_id])[first.prompt_id]
        == _vectors(Prompt, [again.pk])[again.pk]
    )
    assert _vectors(Completion, [ours.pk])[ours.pk] == _vectors(Completion, [reply.pk])[reply.pk]


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_the_worker_indexes_a_few_seconds_at_a_time_and_queues_itself_again(
    project, tmp_path, monkeypatch
):
    """A big import's catch-up must not hold a one-slot worker (`make run`'s) for minutes: each
    run stops after INDEX_TASK_SECONDS and sends the task again, behind what was queued."""
    from config.celery import app
    from feedback.services import search, search_index_step, search_pending
    from tests.modeling.helpers import queued_tasks

    path = tmp_path / "rows.jsonl"
    rows = [{"prompt": f"Question {n}?", "chosen": "Yes.", "rejected": "No."} for n in range(3)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    assert services.import_file(project=project, path=path).ok
    assert search_pending() == 3 + 6  # the prompts and the replies

    def purge():
        with app.connection_for_write() as connection:
            connection.default_channel.queue_purge("default")

    purge()
    monkeypatch.setattr(search, "INDEX_BATCH", 2)
    monkeypatch.setattr(search, "INDEX_TASK_SECONDS", 0)  # no second batch in a run
    runs = []
    try:
        for _ in range(6):
            done = search_index_step()
            runs.append((done, queued_tasks("default").count(search.INDEX_TASK)))
    finally:
        purge()
    # A batch a run (prompts, then replies), the task queued again after each run that left
    # work, and not after the one that finished it.
    assert runs == [(2, 1), (1, 2), (2, 3), (2, 4), (2, 4), (0, 4)]
    assert search_pending() == 0


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_changed_text_gets_its_new_vector_at_once_even_inside_an_import(project, records):
    from django.db import transaction

    from feedback.models import Completion

    reply = Completion.objects.get(text="Dogs bark at strangers.")
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SELECT set_config('veredicto.search_later', 'on', true)")
        Completion.objects.filter(pk=reply.pk).update(text="Dogs howl at the moon.")
    assert _found(project, q="howl") == {records["dogs"].pk}
    assert _found(project, q="stranger") == set()
    assert "howl" in _vectors(Completion, [reply.pk])[reply.pk]


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_search_syntax_phrases_minus_and_or(project, records):
    assert _found(project, q='"cats purr"') == {records["cats"].pk}
    assert _found(project, q='"purr cats"') == set()  # word order counts in a phrase
    assert _found(project, q="loudly -purr") == set()  # each text on its own: the prompt has both
    assert _found(project, q="bark or purr") == {records["cats"].pk, records["dogs"].pk}


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


def _every_page(project, filters: RecordFilters) -> list[int]:
    """Item ids on every page of records_page, following the Next links from the first."""
    shown, paging = [], {}
    while True:
        page = records_page(project=project, filters=filters, **paging)
        shown += [item.pk for item in page.records]
        if page.older is None:
            return shown
        paging = {name: str(value) for name, value in page.older.items()}


@pytest.mark.parametrize(
    "filters",
    [
        {},
        {"q": "purr"},
        {"q": "ferrets"},
        {"origin": "human"},
        {"origin": "simulated", "q": "bark"},
        {"q": "ferrets", "split": "train", "status": "open"},
        {"annotator": "ann", "origin": "human"},
    ],
)
def test_pages_show_what_the_query_finds_once_each_newest_first(
    project, records, annotator, other_annotator, filters, monkeypatch
):
    for n in range(40):
        make_item(project, TaskKind.PAIRWISE, texts=[f"Reply {n} about ferrets", "other"])
    _judge(records["cats"], annotator)
    _judge(records["dogs"], other_annotator, origin=Origin.SIMULATED)
    expected = [
        item.pk for item in records_for_project(project=project, filters=RecordFilters(**filters))
    ]
    assert _every_page(project, RecordFilters(**filters)) == expected
    # Too many to count: the same records, paged by the ids at the pages' edges.
    monkeypatch.setattr(record_selectors, "COUNT_CAP", 10)
    assert _every_page(project, RecordFilters(**filters)) == expected
    # Words too common to list their texts one by one: the same records again.
    monkeypatch.setattr(record_selectors, "MATCHES_LISTED", 0)
    assert _every_page(project, RecordFilters(**filters)) == expected


def test_more_than_the_cap_says_more_than_and_pages_by_id(client, reviewer, project, monkeypatch):
    monkeypatch.setattr(record_selectors, "COUNT_CAP", 30)
    items = [make_item(project, TaskKind.PAIRWISE) for _ in range(60)]
    newest = sorted((item.pk for item in items), reverse=True)
    client.force_login(reviewer)
    url = f"/projects/{project.pk}/records/"
    html = client.get(url).content.decode()
    assert "More than 30 records" in html and "page 1 of" not in html
    assert f'href="{url}?before={newest[24]}"' in html  # Next: the records older than the last
    second = client.get(f"{url}?before={newest[24]}").content.decode()
    assert f">#{newest[25]}<" in second and f">#{newest[24]}<" not in second
    assert f"{url}?after={newest[25]}" in second  # back to the newer page
    back = client.get(f"{url}?after={newest[25]}").content.decode()
    assert f">#{newest[0]}<" in back and f">#{newest[25]}<" not in back
    # The filters travel with the paging, and a deep page by number still opens.
    filtered = client.get(f"{url}?kind=pairwise&before={newest[24]}").content.decode()
    assert f"?kind=pairwise&after={newest[25]}" in filtered.replace("&amp;", "&")
    assert client.get(f"{url}?page=9999").status_code == 200


def test_the_count_gives_up_after_its_time_budget(client, reviewer, project, monkeypatch):
    monkeypatch.setattr(record_selectors, "COUNT_BUDGET_MS", 0)
    for _ in range(30):
        make_item(project, TaskKind.PAIRWISE)
    client.force_login(reviewer)
    html = client.get(f"/projects/{project.pk}/records/").content.decode()
    assert "More than 25 records" in html and "Next" in html
    # A short list needs no count: the first page holds all of it.
    make_item(project, TaskKind.DEMONSTRATION)
    short = client.get(f"/projects/{project.pk}/records/?kind=demonstration").content.decode()
    assert "1 record matches" in short


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_time_limit_cancels_a_slow_statement_and_leaves_the_connection_as_it_was(db):
    import time

    from feedback.selectors.records import _Cancelled, _time_limit

    with connection.cursor() as cursor:
        cursor.execute("SHOW statement_timeout")
        before = cursor.fetchone()[0]
        with pytest.raises(_Cancelled), _time_limit() as limit:
            limit(time.perf_counter() + 0.05)
            cursor.execute("SELECT pg_sleep(2)")
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == before
        with _time_limit() as limit:
            limit(time.perf_counter() + 5)
            cursor.execute("SELECT 1")
        cursor.execute("SHOW statement_timeout")
        assert cursor.fetchone()[0] == before


def test_annotator_choices_are_people_with_submitted_work_here(
    project, records, annotator, other_annotator
):
    from feedback.selectors.records import record_annotators

    _judge(records["cats"], annotator)
    elsewhere = services.project_create(name="Elsewhere", task_kinds=["pairwise"])
    _judge(make_item(elsewhere, TaskKind.PAIRWISE), other_annotator)
    services.task_next_for_annotator(project=project, annotator=other_annotator)  # a lease only
    assert record_annotators(project=project) == [annotator.username]


def test_a_search_that_runs_too_long_is_stopped_with_a_message(
    client, reviewer, project, records, monkeypatch
):
    monkeypatch.setattr(record_selectors, "PAGE_BUDGET_MS", 0)
    client.force_login(reviewer)
    page = client.get(f"/projects/{project.pk}/records/?q=cats")
    html = page.content.decode()
    assert page.status_code == 200
    assert "took too long and was stopped: add a rarer word" in html
    assert f">#{records['cats'].pk}<" not in html


@pytest.mark.skipif("connection.vendor != 'postgresql'")
def test_a_search_stopped_while_an_import_is_indexed_says_to_try_again_soon(
    client, reviewer, project, records, monkeypatch
):
    # A reply as an import leaves it: no vector yet.
    with connection.cursor() as cursor:
        cursor.execute(
            "UPDATE feedback_completion SET search = NULL WHERE id = %s",
            [records["cats"].completions.first().pk],
        )
    monkeypatch.setattr(record_selectors, "PAGE_BUDGET_MS", 0)
    client.force_login(reviewer)
    html = client.get(f"/projects/{project.pk}/records/?q=cats").content.decode()
    assert "stopped while search indexes a recent import: try again in a minute" in html
    assert "add a rarer word" not in html
