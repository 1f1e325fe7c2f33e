"""How numbers read on the report page: one formatter for every section, so a table and a sentence agree."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import numpy as np
import pandas as pd


def fmt(value: Any, digits: int = 4) -> str:
    if value is None or value is pd.NA or (isinstance(value, (float, np.floating)) and not math.isfinite(value)):
        return "–"
    return f"{value:.{digits}g}" if isinstance(value, (float, np.floating)) else str(value)


def duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "–"
    return str(dt.timedelta(seconds=round(seconds)))


def diverged_note(k: int, n: int, unit: str = "seeds") -> str:
    """'1 of 3 seeds diverged'; empty when none did, so callers can join the non-empty parts."""
    return f"{k} of {n} {unit} diverged" if k > 0 else ""
