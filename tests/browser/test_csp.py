"""Pages the other browser tests do not walk, under the Content-Security-Policy: the `page`
fixture fails a test on any refusal (an inline script or style, an eval); here each page must
also still work."""

import pytest

from tests.playwright_support import login

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]


def test_admin_screens_and_api_docs_work_under_the_policy(page, admin_user, project):
    login(page, "boss")
    page.goto("/admin/feedback/project/")
    assert page.locator("#result_list").is_visible()
    page.goto(f"/admin/feedback/project/{project.pk}/change/")
    assert page.locator("input[name=name]").input_value() == project.name
    page.goto("/")
    page.get_by_role("link", name="Dashboard").click()  # the evaluation charts (Chart.js)
    page.wait_for_load_state()
    assert page.locator("main h1").is_visible()
    page.goto("/api/docs")
    page.locator(".swagger-ui .info .title").wait_for()  # Swagger UI ran: its scripts loaded
