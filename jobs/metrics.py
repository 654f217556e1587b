"""Numbers a run reports, made storable. Plain Python: training processes import it too."""

from __future__ import annotations

import math
from typing import Any


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics dict. JSON columns refuse NaN and infinities (PostgreSQL
    rejects them); a diverged loss is dropped from the point rather than failing the write."""
    return {
        str(key): float(value)
        for key, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    }
