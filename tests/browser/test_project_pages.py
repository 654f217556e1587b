"""An admin sets up a project in the app: settings, members, guidelines with a preview, and labels
added with the visual editor; the page fits a phone as well as a desktop (issue #17)."""

import pytest

from feedback.models import Project
from tests.playwright_support import assert_no_sideways_scroll, login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WIDTHS = [1280, 360]


def test_admin_creates_a_project_with_the_label_editor(page, admin_user, annotator):
    errors: list[str] = []
    page.on("console", lambda msg: msg.type == "error" and errors.append(msg.text))
    login(page, "boss")
    page.goto("/")
    page.get_by_role("link", name="New project").click()
    page.fill("input[name=name]", "Arena")
    page.check("input[name=task_kinds][value=pairwise]")
    page.fill("textarea[name=guidelines]", "Prefer **correct** replies.")
    page.wait_for_selector("#guidelines-preview strong:text('correct')")
    page.fill("input[name=overlap]", "2")
    page.check(f"input[name=annotators][value='{annotator.pk}']")

    row = page.locator("[data-label-row]").nth(0)
    row.locator("input[name$='-name']").fill("helpfulness")
    row.locator("select[name$='-scope']").select_option("reply")
    row.locator("input[name$='-max']").fill("7")
    page.get_by_role("button", name="Add a label").click()
    flag = page.locator("[data-label-row]").nth(1)
    flag.locator("input[name$='-name']").fill("unsafe")
    flag.locator("select[name$='-kind']").select_option("flag")
    assert not flag.locator("input[name$='-max']").is_visible()  # a flag has no scale
    page.get_by_role("button", name="Add a label").click()
    gone = page.locator("[data-label-row]").nth(2)
    gone.locator("input[name$='-name']").fill("dropped")
    gone.get_by_label("Remove").check()
    page.get_by_role("button", name="Create project").click()

    page.wait_for_url("**/edit/")
    assert "is saved" in page.content()
    project = Project.objects.get()
    assert [spec["name"] for spec in project.label_schema] == ["helpfulness", "unsafe"]
    assert project.label_schema[0]["scope"] == "reply" and project.label_schema[0]["max"] == 7
    assert list(project.annotators.all()) == [annotator]
    assert errors == []


def test_a_refused_setting_is_shown_next_to_its_field(page, admin_user):
    login(page, "boss")
    page.goto("/projects/new/")
    page.fill("input[name=name]", "Too quick")
    page.check("input[name=task_kinds][value=ranking]")
    page.fill("input[name=lease_seconds]", "0")
    page.get_by_role("button", name="Create project").click()
    page.wait_for_selector("text=A lease lasts at least 60 seconds.")
    assert not Project.objects.exists()


@pytest.mark.parametrize("width", WIDTHS)
def test_project_page_fits_the_screen(page, admin_user, project, width):
    page.set_viewport_size({"width": width, "height": 900})
    login(page, "boss")
    for path in ("/projects/new/", f"/projects/{project.pk}/edit/"):
        page.goto(path)
        assert_no_sideways_scroll(page)
