"""Blind voting through the API as in the browser (issue #18): a lease never says which model
wrote a reply; an arena project (reveal_models) names them in the vote's answer, and only then."""

import json

import pytest
from django.test import Client

from core.tokens import token_create
from tests.factories import make_item

pytestmark = pytest.mark.django_db


def _client(user) -> Client:
    _, key = token_create(user=user, name="blind")
    return Client(headers={"Authorization": f"Bearer {key}"})


@pytest.mark.parametrize("reveal", [False, True])
def test_a_lease_hides_who_wrote_each_reply_and_only_an_arena_vote_reveals_it(
    annotator, project, reveal
):
    project.reveal_models = reveal
    project.save()
    make_item(project)
    api = _client(annotator)

    lease = api.post(f"/api/projects/{project.pk}/next", content_type="application/json")
    assert lease.status_code == 200
    assert "model-0" not in lease.content.decode() and "model-1" not in lease.content.decode()
    assert set(lease.json()["item"]["completions"][0]) == {"id", "text"}

    vote = api.post(
        f"/api/assignments/{lease.json()['id']}/pairwise",
        json.dumps({"choice": "b", "strength": "clear"}),
        content_type="application/json",
    )
    assert vote.status_code == 200, vote.content
    revealed = vote.json()["revealed_models"]
    assert revealed == ({"a": "model-0", "b": "model-1"} if reveal else None)


def test_the_schema_documents_no_model_name_on_a_lease(client):
    schema = client.get("/api/openapi.json").json()["components"]["schemas"]
    assert set(schema["TaskCompletionOut"]["properties"]) == {"id", "text"}


def test_the_data_endpoint_still_tells_admins_who_wrote_each_reply(admin_user, project):
    make_item(project)
    items = _client(admin_user).get(f"/api/projects/{project.pk}/items").json()["items"]
    assert [c["model_name"] for c in items[0]["completions"]] == ["model-0", "model-1"]
