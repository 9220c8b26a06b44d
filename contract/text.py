"""Text that JSON and UTF-8 can carry: finding and replacing lone UTF-16 surrogates. Torch-free.

A JSON string may hold an escape like "\\udfff" that decodes to a lone surrogate: a Python str that no
UTF-8 encoder accepts, so storing it breaks every later answer that includes it. The server refuses such
text at the door (`lone_surrogate_path`); readers of files written elsewhere replace it (`without_surrogates`).
"""

from __future__ import annotations

import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")
REPLACEMENT = "\ufffd"


def has_surrogate(text: str) -> bool:
    return _SURROGATE.search(text) is not None


def lone_surrogate_path(value: Any, path: str = "") -> str | None:
    """The dotted path of the first string (or object key) holding a lone surrogate, else None.
    Paths read like the API's error fields: `tags.0`, `config.data.train`, `events.3.message`."""
    if isinstance(value, str):
        return (path or "(body)") if has_surrogate(value) else None
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if isinstance(key, str) and has_surrogate(key):
                return f"{path}.{without_surrogates(key)}" if path else without_surrogates(key)
            found = lone_surrogate_path(item, where)
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            found = lone_surrogate_path(item, f"{path}.{i}" if path else str(i))
            if found:
                return found
    return None


def without_surrogates(value: Any) -> Any:
    """`value` with every lone surrogate in its strings and keys replaced by U+FFFD (same value if none)."""
    if isinstance(value, str):
        return _SURROGATE.sub(REPLACEMENT, value) if has_surrogate(value) else value
    if isinstance(value, dict):
        return {without_surrogates(k): without_surrogates(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_surrogates(v) for v in value]
    if isinstance(value, tuple):
        return tuple(without_surrogates(v) for v in value)
    return value
