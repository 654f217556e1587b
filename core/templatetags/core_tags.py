from django import template

register = template.Library()


@register.filter
def duration(seconds: float | None) -> str:
    """45 s, 12 min 5 s, 3 h 20 min: precise enough for an ETA, short enough for a table."""
    if seconds is None:
        return "–"
    seconds = round(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


@register.filter
def metric(value) -> str:
    """Loss-like numbers: four significant digits, no scientific notation for everyday values."""
    if not isinstance(value, int | float):
        return str(value)
    return f"{value:.4g}"


@register.filter
def thousands(value) -> str:
    """1956480 -> 1,956,480 (django.contrib.humanize is not installed)."""
    return f"{value:,}" if isinstance(value, int) else "–" if value is None else str(value)


@register.filter
def percent(share) -> str:
    """0.634 -> 63.4%; "–" for None."""
    return f"{100 * share:.1f}%" if isinstance(share, int | float) else "–"
