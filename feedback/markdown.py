"""Markdown for untrusted text: CommonMark with raw HTML off, then a real sanitiser (nh3).

`rendered(text)` is what pages use: this process's memory, then Redis, then rendering. A completion
is shown to k annotators, usually served by different processes: through Redis it is rendered
once. `prefetch(texts)` reads everything a page is about to show in one Redis round trip.
"""

import hashlib
import logging
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import markdown_it
import nh3
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


@lru_cache(maxsize=4096)
def render_markdown(text: str) -> str:
    """HTML that is safe to mark safe: model and annotator text is never trusted.

    Cached per process: the same completion is shown to k annotators, and prompts and
    guidelines repeat on every task screen (rendering is about a third of a task request)."""
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
_LOCAL_MAX = 4096
_local: dict[str, str] = {}  # text -> HTML, oldest first; Redis is trusted as sessions are


def rendered(text: str) -> str:
    """Sanitised HTML of `text`, from this process's memory, else Redis, else rendered now."""
    html = _local.get(text)
    if html is None:
        if not text:
            return ""
        prefetch([text])
        html = _local[text]
    return html


def prefetch(texts: Iterable[str]) -> None:
    """Bring the HTML of `texts` into this process's memory: one Redis read for all of them,
    rendering (and sharing) the ones nobody has rendered yet."""
    keys = {
        f"md:{_RENDERER}:{hashlib.sha256(text.encode()).hexdigest()}": text
        for text in set(texts)
        if text and text not in _local
    }
    if not keys:
        return
    try:
        found = cache.get_many(list(keys))
    except RedisError:  # Redis down: render here rather than fail the page
        logger.warning("markdown cache unavailable", exc_info=True)
        found = {}
    made = {}
    for key, text in keys.items():
        html = found.get(key)
        if html is None:
            html = made[key] = render_markdown.__wrapped__(text)
        _remember(text, html)
    if made:
        try:
            cache.set_many(made, _SHARED_SECONDS)
        except RedisError:
            logger.warning("markdown cache unavailable", exc_info=True)


def _remember(text: str, html: str) -> None:
    _local[text] = html
    while len(_local) > _LOCAL_MAX:
        try:
            del _local[next(iter(_local))]
        except (KeyError, RuntimeError, StopIteration):  # another thread evicted it first
            break
