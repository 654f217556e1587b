"""Markdown for untrusted text: CommonMark with raw HTML off, then a real sanitiser (nh3)."""

from functools import lru_cache

import nh3
from markdown_it import MarkdownIt

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
