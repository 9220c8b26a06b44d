"""cliplab's CLIP library: `load`, `tokenize`, `available_models` in the shape users know from `clip`.

The heavy parts (torch) load on first use, so `import trainer` alone stays cheap.
"""

from typing import Any

__all__ = ["load", "tokenize", "available_models"]


def __getattr__(name: str) -> Any:
    if name == "load":
        from trainer.checkpoint import load

        return load
    if name == "tokenize":
        from trainer.tokenizer import tokenize

        return tokenize
    if name == "available_models":
        from contract.presets import available_models

        return available_models
    raise AttributeError(f"module 'trainer' has no attribute {name!r}")
