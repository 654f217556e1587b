"""/markdown/preview/ cannot grow a web process: previews are not cached, the page cache is
bounded by bytes in this process and per entry in Redis, and only markdown writers may call it.
Measured on the process's real memory (tracemalloc), against the real Redis."""

from __future__ import annotations

import gc
import tracemalloc

import pytest
from django.core.cache import cache

from feedback import markdown

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def empty_caches():
    markdown.cache_clear()
    cache.clear()
    yield
    markdown.cache_clear()


def long_text(i: int) -> str:
    return f"Preview {i}: **bold** " + "plain words " * 1600  # ~19 KB of text, as much HTML


def test_many_distinct_long_previews_leave_no_memory_behind(client, annotator):
    client.force_login(annotator)
    client.post("/markdown/preview/", {"text": long_text(-1)})  # warm up imports and pools
    tracemalloc.start()
    try:
        gc.collect()  # responses sit in reference cycles until a collection
        before = tracemalloc.take_snapshot()
        for i in range(60):
            response = client.post("/markdown/preview/", {"text": long_text(i)})
            assert response.status_code == 200 and b"<strong>bold</strong>" in response.content
        gc.collect()
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # 60 previews of ~40 KB each kept would be ~2.3 MB; without them only noise remains.
    assert grown < 1024**2, f"the process kept {grown / 1024:.0f} KB"


def test_the_page_cache_stays_under_its_byte_bound(monkeypatch):
    monkeypatch.setattr(markdown, "_LOCAL_MAX_BYTES", 1024**2)
    markdown.prefetch([long_text(i) for i in range(60)])  # ~2.3 MB rendered
    assert 0 < markdown._local_bytes <= 1024**2
    assert markdown._local_bytes == sum(markdown._size(t, h) for t, h in markdown._local.items())
    assert markdown.rendered(long_text(59)) == markdown.render_markdown(long_text(59))


def test_the_most_recently_used_text_is_kept_over_older_ones(monkeypatch):
    monkeypatch.setattr(markdown, "_LOCAL_MAX_BYTES", 3 * markdown._size("a", "<p>a</p>\n"))
    for text in "abc":
        markdown.prefetch([text])
    markdown.prefetch(["a"])  # used again: now the newest
    markdown.prefetch(["d"])
    assert list(markdown._local) == ["c", "a", "d"]


def test_an_oversized_text_is_kept_neither_here_nor_in_redis(monkeypatch):
    monkeypatch.setattr(markdown, "_ENTRY_MAX_BYTES", 10_000)
    big, small = long_text(1), "*small*"
    markdown.prefetch([big, small])
    assert big not in markdown._local and small in markdown._local
    shared = cache.get_many([key for key in _keys() if key.startswith("md:")])
    assert list(shared.values()) == ["<p><em>small</em></p>\n"]
    assert markdown.rendered(big) == markdown.render_markdown(big)  # still shown, just rendered


def _keys() -> list[str]:
    client = cache._cache.get_client()
    return [key.decode().split(":", 2)[-1] for key in client.keys("*")]


def test_markdown_preview_is_refused_to_users_without_a_role(client, nobody):
    client.force_login(nobody)
    assert client.post("/markdown/preview/", {"text": "*x*"}).status_code == 403
