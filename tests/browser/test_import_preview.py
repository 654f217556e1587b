"""The import preview in a real browser, at desktop width and on a 360 px phone: each reply in
a block of its own with its model's name, rows with errors named, the import refused while the
preview shows errors, and nothing pushing the page wider than the window (issue #17)."""

import json

import pytest

from feedback.models import DataImport, TaskKind
from tests.factories import ProjectFactory
from tests.playwright_support import assert_no_sideways_scroll, login, shot

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

WORD = "Supercalifragilistic" * 8  # one long word: it must wrap, not push the page wider
GOOD = [
    {"prompt": f"Question {n} {WORD}?", "chosen": f"Yes {WORD}", "rejected": f"No {n}",
     "chosen_model": f"model-{WORD[:40]}", "rejected_model": "small-model"}
    for n in range(7)
]  # fmt: skip
BAD = [*GOOD[:2], {"prompt": "Half a pair?", "chosen": "yes"}, {"messages": "not a list"}]


@pytest.fixture
def project(settings, tmp_path, admin_user):
    settings.MEDIA_ROOT = tmp_path / "media"
    return ProjectFactory(name="Import preview", task_kinds=[TaskKind.PAIRWISE])


def upload(page, project, path, rows) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    page.goto(f"/projects/{project.pk}/data/")
    page.set_input_files("input[name=file]", str(path))
    page.click("button:has-text('Preview')")
    page.wait_for_selector("#import-panel >> text=Checked the first")


@pytest.mark.parametrize("width", [1280, 360])
def test_the_import_preview_fits_the_screen_and_refuses_a_file_with_errors(
    page, project, admin_user, tmp_path, width
):
    page.set_viewport_size({"width": width, "height": 800})
    login(page, admin_user.username)

    upload(page, project, tmp_path / "good.jsonl", GOOD)
    panel = page.locator("#import-panel")
    assert "Checked the first 7 rows" in panel.inner_text()
    assert "The first 5 valid rows" in panel.inner_text()
    assert page.locator("table.preview tbody tr").count() == 5
    replies = page.locator("table.preview tbody tr").first.locator(".preview-reply")
    assert replies.count() == 2
    assert replies.nth(0).locator(".badge").inner_text() == f"model-{WORD[:40]}"
    assert replies.nth(1).locator(".badge").inner_text() == "small-model"
    assert page.get_by_role("button", name="Import the whole file").is_enabled()
    assert_no_sideways_scroll(page)
    shot(page, f"data-import-preview-{width}", full_page=True)

    upload(page, project, tmp_path / "bad.jsonl", BAD)
    errors = page.locator("#preview-errors").inner_text()
    assert "Row 3: rejected is missing" in errors
    assert "Row 4: messages must be a list" in errors
    button = page.get_by_role("button", name="Import the whole file")
    assert button.is_disabled()
    assert_no_sideways_scroll(page)
    button.click(force=True)  # a disabled button submits nothing
    assert "/data/" in page.url and not DataImport.objects.exists()
