from django import template
from django.http import QueryDict
from django.urls import reverse
from django.utils.formats import date_format
from django.utils.html import escape
from django.utils.safestring import mark_safe
from django.utils.timezone import localtime

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
        interval = cell.interval  # formatted once, for the cell and its tooltip
        small = f"<small>{interval}</small>" if interval else ""
        title = escape(cell.title_with(interval))
        parts.append(f'<td class="num" title="{title}">{cell.text}{small}</td>')
    return mark_safe("".join(parts))


@register.simple_tag
def dashboard_row_head(checkpoint, is_admin: bool) -> str:
    """A dashboard row's first four cells (name, kind, lineage, created) as one HTML string, for
    the reason metric_cells is one: 200 rows of template lookups cost a good part of the page.
    Every name is escaped; the job links only for admins, as the pages it leads to are theirs."""
    c = checkpoint
    if c.is_base:
        lineage = '<span class="muted">base model</span>'
    else:
        parts = []
        if c.base_model:
            parts.append(f"{escape(c.base_model.name)} → ")
        if c.parent and c.parent_id != c.base_model_id:
            parts.append(f"{escape(c.parent.name)} → ")
        if c.job_id:
            job = escape(str(c.job))
            if is_admin:
                href = reverse("modeling:job", args=[c.job_id])
                title = "The job's page, with its training loss chart"
                job = f'<a href="{href}" title="{title}">{job}</a>'
            parts.append(job)
        if c.snapshot:
            parts.append(
                f" on “{escape(c.snapshot.name)}” "
                f'<span class="muted">({escape(c.snapshot.project.name)})</span>'
            )
        lineage = "".join(parts)
    created = date_format(localtime(c.created_at), "Y-m-d H:i")
    return mark_safe(
        f'<th class="sticky" scope="row"><a href="{reverse("modeling:checkpoint", args=[c.pk])}">'
        f"{escape(c.name)}</a></th><td>{escape(c.kind)}</td>"
        f'<td class="lineage-cell">{lineage}</td><td class="nowrap">{created}</td>'
    )
