from django import template
from django.utils.safestring import SafeString, mark_safe

from feedback import markdown

register = template.Library()


@register.filter(name="markdown")
def markdown_filter(text: str) -> SafeString:
    return mark_safe(markdown.rendered(text or ""))


@register.filter
def get_item(mapping: dict, key):
    return mapping.get(key) if mapping else None


@register.filter
def get_rank_field(form, completion_id: int):
    return form[f"rank_{completion_id}"]
