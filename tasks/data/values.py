"""Reading one cell of user data: what counts as missing, as text, as an integer.

Shared by the readers, the column detection and the label cleaning, so that all of them
agree on which values are empty and which labels are the same class.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

import pandas as pd

INTEGER = re.compile(r"[+-]?\d+")


def as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return "" if is_missing(value) else str(value)


def is_missing(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        return math.isnan(value)
    return value is None or value is pd.NA


def is_integral(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, numbers.Integral):
        return True
    if isinstance(value, numbers.Real):
        return float(value).is_integer()
    return isinstance(value, str) and INTEGER.fullmatch(value.strip()) is not None


def is_float(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True
