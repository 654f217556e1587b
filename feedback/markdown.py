"""Markdown for untrusted text: CommonMark with raw HTML off, then a real sanitiser (nh3).

`rendered(text)` is what pages use: this process's memory, then Redis, then rendering. A completion
is shown to k annotators, usually served by different processes: through Redis it is rendered
once. `prefetch(texts)` reads everything a page is about to show in one Redis round trip. HTML
read back from Redis is trusted as this process's own: Redis is reachable by our processes only.
"""

import hashlib
import logging
import threading
from collections import OrderedDict
from collections.abc import Iterable
from pathlib import Path

import markdown_it
import nh3
from django.conf import settings
from django.core.cache import cache
from markdown_it import MarkdownIt
from redis.exceptions import RedisError

logger = logging.getLogger(__name__)

_md = (
    MarkdownIt("commonmark", {"html": False, "linkify": False})
    .enable("table")
    .enable("strikethrough")
)

_ALLOWED_TAGS = {
    "p", "br", "hr", "em", "strong", "del", "code", "pre", "blockquote", "ul", "ol", "li",
    "h1", "h2", "h3", "h4", "h5", "h6", "a", "table", "thead", "tbody", "tr", "th", "td",
}  # fmt: skip


def render_markdown(text: str) -> str:
    """HTML that is safe to mark safe: model and annotator text is never trusted. Uncached: pages
    go through `rendered`, and a live preview's text is new on every keystroke."""
    html = _md.render(text or "")
    return nh3.clean(
        html,
        tags=_ALLOWED_TAGS,
        attributes={"a": {"href", "title"}, "code": {"class"}, "th": {"align"}, "td": {"align"}},
        url_schemes={"http", "https", "mailto"},
        link_rel="noopener noreferrer nofollow",
    )


# Shared entries are keyed by the renderer too: a change to the allowed tags or an upgrade of
# markdown-it or nh3 makes new keys instead of serving HTML sanitised under the old rules.
_RENDERER = hashlib.sha256(
    Path(__file__).read_bytes() + f"{markdown_it.__version__} {nh3.__version__}".encode()  # type: ignore[attr-defined]
).hexdigest()[:16]
_SHARED_SECONDS = 7 * 24 * 3600
# Both caches are bounded by bytes, not entries: an entry is as long as its text allows. This
# process keeps the most recently used texts up to _LOCAL_MAX_BYTES; a text whose text + HTML
# pass _ENTRY_MAX_BYTES is rendered every time, in neither this process nor Redis.
_LOCAL_MAX_BYTES = settings.VEREDICTO_MARKDOWN_CACHE_BYTES
_ENTRY_MAX_BYTES = settings.VEREDICTO_MARKDOWN_ENTRY_BYTES
_local: OrderedDict[str, str] = OrderedDict()  # text -> HTML, least recently used first
_local_bytes = 0
_lock = threading.Lock()


def rendered(text: str) -> str:
    """Sanitised HTML of `text`, from this process's memory, else Redis, else rendered now."""
    html = _local.get(text)  # the common case, without the lock: a dict read is atomic
    if html is None:
        html = _fetch([text]).get(text, "")
    return html


def prefetch(texts: Iterable[str]) -> None:
    """Bring the HTML of `texts` into this process's memory: one Redis read for all of them,
    rendering (and sharing) the ones nobody has rendered yet."""
    _fetch(texts)


def _fetch(texts: Iterable[str]) -> dict[str, str]:
    """text -> HTML for every non-empty text, asking Redis only for those not in memory."""
    result, keys = {}, {}
    with _lock:
        for text in set(texts):
            html = _local.get(text) if text else ""
            if html is None:
                keys[f"md:{_RENDERER}:{hashlib.sha256(text.encode()).hexdigest()}"] = text
            elif text:
                _local.move_to_end(text)
                result[text] = html
    if not keys:
        return result
    try:
        found = cache.get_many(list(keys))
    except RedisError:  # Redis down: render here rather than fail the page
        logger.warning("markdown cache unavailable", exc_info=True)
        found = {}
    made = {}
    for key, text in keys.items():
        html = found.get(key)
        if html is None:
            html = render_markdown(text)
            if _size(text, html) <= _ENTRY_MAX_BYTES:
                made[key] = html
        result[text] = html
        _remember(text, html)
    if made:
        try:
            cache.set_many(made, _SHARED_SECONDS)
        except RedisError:
            logger.warning("markdown cache unavailable", exc_info=True)
    return result


def _size(text: str, html: str) -> int:
    # Python stores a str in 1, 2 or 4 bytes per character: this is within that factor, and
    # is what Redis holds (UTF-8).
    return len(text.encode()) + len(html.encode())


def _remember(text: str, html: str) -> None:
    global _local_bytes
    size = _size(text, html)
    if size > _ENTRY_MAX_BYTES:
        return
    with _lock:
        if text in _local:
            return
        _local[text] = html
        _local_bytes += size
        while _local_bytes > _LOCAL_MAX_BYTES and _local:
            old_text, old_html = _local.popitem(last=False)
            _local_bytes -= _size(old_text, old_html)


def cache_clear() -> None:
    """Empty this process's memory (tests)."""
    global _local_bytes
    with _lock:
        _local.clear()
        _local_bytes = 0
