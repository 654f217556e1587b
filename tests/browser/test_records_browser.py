"""An admin finds records by words and filters, shares the URL, opens one, and deletes two after
confirming; the pages fit a phone as well as a desktop (issue #17)."""

import pytest

from feedback.models import Item, TaskKind
from tests.browser.test_project_pages import WIDTHS
from tests.factories import make_item
from tests.playwright_support import assert_no_sideways_scroll, login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

LONG = "A very long reply without spaces: " + "x" * 400


@pytest.fixture
def shelf(project):
    items = [
        make_item(project, TaskKind.PAIRWISE, texts=[f"Otters hold hands {n}", LONG])
        for n in range(3)
    ]
    items.append(make_item(project, TaskKind.RANKING))
    return items


def test_admin_searches_opens_and_deletes_records(page, admin_user, project, shelf):
    login(page, "boss")
    page.goto(f"/projects/{project.pk}/records/")
    page.fill("input[name=q]", "otter")
    page.select_option("select[name=kind]", "pairwise")
    page.get_by_role("button", name="Filter").click()
    page.wait_for_url("**q=otter**")
    assert "kind=pairwise" in page.url  # the filters live in the URL: a link to share
    page.wait_for_selector("text=3 records match")

    page.goto(page.url)  # the shared link opens the same list
    assert page.input_value("input[name=q]") == "otter"
    page.get_by_role("link", name=f"#{shelf[0].pk}", exact=True).click()
    page.wait_for_selector("text=Otters hold hands 0")
    page.go_back()

    page.check(f"input[name=item][value='{shelf[0].pk}']")
    page.check(f"input[name=item][value='{shelf[1].pk}']")
    page.get_by_role("button", name="Delete…").click()
    page.wait_for_selector("text=Delete 2 records?")
    assert Item.objects.count() == 4
    page.get_by_role("button", name="Delete 2 records").click()
    page.wait_for_selector("text=Deleted 2 records.")
    assert "q=otter" in page.url
    assert Item.objects.count() == 2


@pytest.mark.parametrize("width", WIDTHS)
def test_records_pages_fit_the_screen(page, admin_user, project, shelf, width):
    page.set_viewport_size({"width": width, "height": 900})
    login(page, "boss")
    page.goto(f"/projects/{project.pk}/records/")
    assert_no_sideways_scroll(page)
    page.check(f"input[name=item][value='{shelf[0].pk}']")
    page.get_by_role("button", name="Delete…").click()
    page.wait_for_selector("text=Delete 1 record?")
    assert_no_sideways_scroll(page)
    page.goto(f"/records/{shelf[0].pk}/")
    assert_no_sideways_scroll(page)
