"""The first Quality page of a server process took 8.1 s, later ones 0.4 s (issue #17): the page
imported scipy.stats and statsmodels on first use (3 to 6 s cold), and the URLconf with every
app's views loaded on the first request. Neither may happen on a page view any more."""

import json
import subprocess
import sys

import pytest

from core.roles import Role
from feedback import services
from feedback.models import Assignment, TaskKind
from jobs.backends.local import child_environment
from tests.factories import ProjectFactory, UserFactory, annotator, make_item

HEAVY = ("scipy.stats", "statsmodels", "crowdkit")

# A fresh process, as a server worker is: load what the WSGI entry point loads, then serve the
# Quality page, and say which heavy modules the page view imported.
SCRIPT = """
import json, sys
import config.wsgi  # what a server process runs at start
loaded_at_start = {"feedback.views", "feedback.quality.reports"} <= set(sys.modules)
from django.contrib.auth import get_user_model
from django.test import Client
client = Client()
client.force_login(get_user_model().objects.get(username="boss"))
response = client.get("/projects/%d/quality/")
html = response.content.decode()
print(json.dumps({
    "status": response.status_code,
    "side_bias_flagged": "side bias" in html,
    "kendall_row": "Kendall" in html,
    "loaded_at_start": loaded_at_start,
    "heavy": sorted(m for m in %r if m in sys.modules),
}))
"""


@pytest.fixture
def judged(roles):
    """Enough judgements to run every figure on the page: agreement on overlapping votes and
    rankings, and a side-biased annotator, which the binomial test flags."""
    UserFactory(username="boss", roles=[Role.ADMIN], is_staff=True, is_superuser=True)
    project = ProjectFactory(overlap=3, task_kinds=[TaskKind.PAIRWISE, TaskKind.RANKING])
    items = [make_item(project) for _ in range(24)]
    users = [annotator("careful1"), annotator("careful2"), annotator("lefty")]
    for item in items:
        for user in users:
            a = Assignment.objects.create(item=item, annotator=user, expires_at="2100-01-01T00:00Z")
            a_id = item.item_completions.get(position=0).completion_id
            a.display_order = [a_id, item.item_completions.get(position=1).completion_id]
            a.save()
            choice = "a" if user.username == "lefty" or item.pk % 3 else "b"
            services.pairwise_submit(assignment_id=a.pk, annotator=user, choice=choice,
                                     strength="clear", seconds_spent=5.0)  # fmt: skip
    for _ in range(2):
        item = make_item(project, TaskKind.RANKING)
        ids = [ic.completion_id for ic in item.item_completions.all()]
        for user, ranking in zip(users, ([[i] for i in ids], [[i] for i in reversed(ids)]),
                                 strict=False):  # fmt: skip
            a = Assignment.objects.create(item=item, annotator=user, expires_at="2100-01-01T00:00Z")
            services.ranking_submit(assignment_id=a.pk, annotator=user, ranking=ranking)
    return project


@pytest.mark.django_db(transaction=True)
def test_the_first_quality_page_of_a_process_imports_nothing_heavy(judged):
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT % (judged.pk, HEAVY)],
        env=child_environment(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    page = json.loads(result.stdout.strip().splitlines()[-1])
    assert page["status"] == 200
    assert page["side_bias_flagged"] and page["kendall_row"]  # every figure was computed
    assert page["loaded_at_start"]  # the views came with the process, not the first request
    assert page["heavy"] == []
