from django import template
from django.http import QueryDict
from django.utils.html import escape
from django.utils.safestring import mark_safe

register = template.Library()


@register.simple_tag(takes_context=True)
def query_with(context, **changes) -> str:
    """The current query string with some parameters replaced ("" removes one), so that sort
    links and chart choices keep the dashboard's filters."""
    query: QueryDict = context["request"].GET.copy()
    for name, value in changes.items():
        if value in ("", None):
            query.pop(name, None)
        else:
            query[name] = value
    encoded = query.urlencode()
    return f"?{encoded}" if encoded else "?"


@register.filter
def sort_toggle(column_key: str, current: str) -> str:
    """The sort a column header asks for: descending first, then ascending on a second click."""
    return column_key if current == f"-{column_key}" else f"-{column_key}"


@register.filter
def metric_cells(row) -> str:
    """A dashboard row's metric cells as one HTML string. With 200 checkpoints × 50 metrics the
    template engine would spend most of a second on 10,000 cells; this is one join per row.
    Only numbers are written, and the tooltip is escaped anyway."""
    parts = []
    for cell in row.cells:
        if cell is None:
            parts.append('<td class="num muted">–</td>')
            continue
        interval = cell.interval
        small = f"<small>{interval}</small>" if interval else ""
        parts.append(f'<td class="num" title="{escape(cell.title)}">{cell.text}{small}</td>')
    return mark_safe("".join(parts))
