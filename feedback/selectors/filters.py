"""Reading list filters from a page's query string, where they live so that a filtered list is
a link to share. An unknown value is dropped rather than refused: an old link still opens."""

from __future__ import annotations

from collections.abc import Collection

from django.http import QueryDict


def query_choice(data: QueryDict, name: str, allowed: Collection[str]) -> str:
    value = data.get(name, "").strip()
    return value if value in allowed else ""


def query_id(data: QueryDict, name: str) -> int | None:
    value = data.get(name, "").strip()
    return int(value) if value.isdigit() and 0 < int(value) < 2**63 else None


def query_string(**values: object) -> str:
    """`?a=1&b=x` of the values that are set, in the order given; "" when none is."""
    kept = QueryDict(mutable=True)
    for name, value in values.items():
        if value not in (None, ""):
            kept[name] = str(value)
    return f"?{kept.urlencode()}" if kept else ""
