import hashlib
import logging
from functools import lru_cache
from pathlib import Path

import markdown_it
import nh3
from django import template
from django.core.cache import cache
from django.utils.safestring import SafeString, mark_safe
from redis.exceptions import RedisError

from feedback import markdown
from feedback.markdown import render_markdown

register = template.Library()
logger = logging.getLogger(__name__)

# Shared cache entries are keyed by the renderer too: a change to the allowed tags or an upgrade
# of markdown-it or nh3 makes new keys instead of serving HTML sanitised under the old rules.
_RENDERER = hashlib.sha256(
    Path(markdown.__file__).read_bytes() + f"{markdown_it.__version__} {nh3.__version__}".encode()  # type: ignore[attr-defined]
).hexdigest()[:16]
_SHARED_SECONDS = 7 * 24 * 3600


@lru_cache(maxsize=4096)
def _rendered(text: str) -> str:
    """Sanitised HTML of `text`, from this process's memory, else Redis, else rendered now.

    A completion is shown to k annotators, usually served by different processes: through
    Redis it is rendered once. Redis is trusted as much as the sessions it already holds."""
    key = f"md:{_RENDERER}:{hashlib.sha256(text.encode()).hexdigest()}"
    try:
        html = cache.get(key)
    except RedisError:  # Redis down: render here rather than fail the page
        logger.warning("markdown cache unavailable", exc_info=True)
        return render_markdown.__wrapped__(text)
    if html is None:
        html = render_markdown.__wrapped__(text)  # this cache is in front, skip the inner one
        try:
            cache.set(key, html, _SHARED_SECONDS)
        except RedisError:
            logger.warning("markdown cache unavailable", exc_info=True)
    return html


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    return mark_safe(_rendered(text or ""))


@register.filter
def get_item(mapping: dict, key):
    return mapping.get(key) if mapping else None


@register.filter
def get_rank_field(form, completion_id: int):
    return form[f"rank_{completion_id}"]
