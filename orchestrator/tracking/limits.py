"""What MLflow accepts: key characters and lengths, value lengths, batch sizes, filter literals.

Values are shaped here before they are sent (nested configs flattened to dotted keys, long values
cut, metrics split into numbers and text), so a call is never rejected for its shape and retried
in vain. MLflow's limits are copied rather than imported so importing this stays cheap.
"""

from __future__ import annotations

import json
import logging
import numbers
import re
from collections.abc import Iterator, Mapping
from typing import Any

__all__ = [
    "MAX_KEY",
    "MAX_METRICS_PER_BATCH",
    "MAX_PARAMS_TAGS_PER_BATCH",
    "MAX_PARAM_VALUE",
    "MAX_TAG_VALUE",
    "chunks",
    "filter_literal",
    "flatten",
    "mlflow_key",
    "split_metrics",
    "tag_filter",
    "text",
]

_log = logging.getLogger(__name__)

# mlflow.utils.validation: MAX_PARAM_VAL_LENGTH, MAX_TAG_VAL_LENGTH, MAX_ENTITY_KEY_LENGTH,
# MAX_PARAMS_TAGS_PER_BATCH, MAX_METRICS_PER_BATCH.
MAX_PARAM_VALUE = 6000
MAX_TAG_VALUE = 8000
MAX_KEY = 250
MAX_PARAMS_TAGS_PER_BATCH = 100
MAX_METRICS_PER_BATCH = 1000
_INVALID_KEY_CHARS = re.compile(r"[^/\w.\- :]")  # MLflow accepts slashes, alphanumerics, _ . - space and colon


def filter_literal(value: str) -> str:
    """A search_runs string literal; names are ids, so a value holding both quote kinds is refused."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    raise ValueError(f"names used in run lookups cannot contain both ' and \": {value!r}")


def tag_filter(tags: Mapping[str, str]) -> str:
    """A ``search_runs`` filter matching every tag, e.g. ``tags.`trilevel.kind` = 'trial' and …``."""
    return " and ".join(f"tags.`{key}` = {filter_literal(value)}" for key, value in tags.items())


def mlflow_key(key: str) -> str:
    """A key MLflow accepts: allowed characters only, no empty/'.'/'..' path parts, at most 250 characters."""
    cleaned = _INVALID_KEY_CHARS.sub("_", str(key))
    parts = [part for part in cleaned.split("/") if part not in ("", ".", "..")]
    return ("/".join(parts) or "_")[:MAX_KEY]


def text(value: Any) -> str:
    """A param or tag value as text: strings as they are, lists/tuples as JSON, anything else ``str()``."""
    if isinstance(value, str):
        return value
    if isinstance(value, list | tuple):
        return json.dumps(list(value), default=str)
    return str(value)


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mappings to ``{"a.b.c": "value"}``; lists/tuples become JSON, everything else ``str()``.

    ``flatten({"stages": {"search": {"lr": 0.1}}}) == {"stages.search.lr": "0.1"}``. An empty nested
    mapping keeps its key (value ``"{}"``) so it stays visible.
    """
    out: dict[str, str] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            if value:
                out.update(flatten(value, name))
            else:
                out[name] = "{}"
        else:
            out[name] = text(value)
    return out


def _as_number(value: Any) -> float | None:
    """A float for numbers, numpy scalars and one-element tensors/arrays (bools count as 0/1); None otherwise."""
    if isinstance(value, numbers.Real):
        return float(value)
    if callable(getattr(value, "item", None)):
        try:
            item = value.item()
        except (ValueError, RuntimeError):  # more than one element
            return None
        return float(item) if isinstance(item, numbers.Real) else None
    return None


def split_metrics(metrics: Mapping[str, Any], prefix: str = "") -> tuple[dict[str, float], dict[str, str]]:
    """(numeric metrics, string values for tags); nested mappings flatten with dots; other values are dropped."""
    numeric: dict[str, float] = {}
    texts: dict[str, str] = {}
    for key, value in metrics.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            sub_numeric, sub_texts = split_metrics(value, name)
            numeric.update(sub_numeric)
            texts.update(sub_texts)
        elif isinstance(value, str):
            texts[name] = value
        elif (number := _as_number(value)) is not None:
            numeric[name] = number
        else:
            _log.debug("tracking: metric %r ignored, %s is not numeric", name, type(value).__name__)
    return numeric, texts


def chunks(items: list, size: int) -> Iterator[list]:
    """`items` in consecutive slices of at most `size` (MLflow's per-batch limits)."""
    for start in range(0, len(items), size):
        yield items[start : start + size]
