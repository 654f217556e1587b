"""The rendered-markdown cache: shared through the real Redis, read in one round trip per page,
and never a reason for a page to fail."""

import pytest
from django.core.cache import cache
from redis.exceptions import ConnectionError as RedisConnectionError

from feedback import markdown


@pytest.fixture(autouse=True)
def empty_caches():
    markdown.cache_clear()
    cache.clear()
    yield
    markdown.cache_clear()


def _reads(monkeypatch) -> list:
    calls = []
    real = cache.get_many
    monkeypatch.setattr(cache, "get_many", lambda keys: calls.append(keys) or real(keys))
    return calls


def test_prefetch_reads_every_text_in_one_round_trip_and_shares_what_it_rendered(monkeypatch):
    reads = _reads(monkeypatch)
    markdown.prefetch(["**a**", "*b*", "**a**", ""])
    assert len(reads) == 1 and len(reads[0]) == 2  # duplicates and empty texts are not asked
    assert markdown.rendered("**a**") == "<p><strong>a</strong></p>\n"
    assert len(reads) == 1  # served from this process's memory

    markdown.cache_clear()  # another process: finds the HTML in Redis, renders nothing
    monkeypatch.setattr(markdown, "render_markdown", None)
    markdown.prefetch(["**a**", "*b*"])
    assert markdown.rendered("*b*") == "<p><em>b</em></p>\n"
    assert markdown.rendered("") == ""


def test_a_redis_outage_renders_locally_instead_of_failing(monkeypatch):
    def down(*args, **kwargs):
        raise RedisConnectionError("down")

    monkeypatch.setattr(cache, "get_many", down)
    monkeypatch.setattr(cache, "set_many", down)
    assert markdown.rendered("<script>x</script> **ok**") == (
        "<p>&lt;script&gt;x&lt;/script&gt; <strong>ok</strong></p>\n"
    )
    warnings = []
    monkeypatch.setattr(markdown.logger, "warning", lambda *a, **k: warnings.append(a[0]))
    markdown.prefetch(["*again*"])
    assert warnings == ["markdown cache unavailable", "markdown cache unavailable"]


def test_the_process_memory_stays_bounded_by_bytes(monkeypatch):
    monkeypatch.setattr(markdown, "_LOCAL_MAX_BYTES", 100)
    markdown.prefetch([f"text {i}" for i in range(10)])  # 6 + 14 bytes each
    assert len(markdown._local) == 5
    assert markdown._local_bytes == sum(markdown._size(t, h) for t, h in markdown._local.items())
