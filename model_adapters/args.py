"""Parsers for the model args every FoPru adapter takes: each names the argument and the accepted values when it
refuses one, before any weights load. lmms-eval passes a model arg as a string, or as an int or bool where its parser
recognised one."""

from __future__ import annotations

import math
from typing import Any

import torch

DTYPES = ("auto", "float32", "float16", "bfloat16")


def positive_int(name: str, value: Any, also: str = "") -> int:
    """``value`` as an integer >= 1; ``also`` adds to the message (e.g. a value lmms-eval's adapters accept and these
    do not)."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(value).strip() != str(number):
        raise ValueError(f"{name}={value!r} is not supported; accepted values: integers >= 1{also}")
    return number


def positive_number(name: str, value: Any) -> float:
    """``value`` as a finite number > 0 (a boolean is refused, though Python counts it as one)."""
    try:
        number = float("nan") if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        number = float("nan")
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name}={value!r} is not supported; accepted values: numbers > 0")
    return number


def boolean(name: str, value: bool | str) -> bool:
    text = str(value).strip().lower()
    if text not in ("true", "false", "1", "0"):
        raise ValueError(f"{name}={value!r} is not supported; accepted values: true, false")
    return text in ("true", "1")


def torch_dtype(dtype: str) -> str | torch.dtype:
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not supported; accepted values: {', '.join(DTYPES)}")
    return dtype if dtype == "auto" else getattr(torch, dtype)
