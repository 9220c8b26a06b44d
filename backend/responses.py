"""The JSON response every route answers with: bad text already stored never turns an answer into a 500."""

from __future__ import annotations

import json
from typing import Any

from fastapi.responses import JSONResponse

from contract.text import without_surrogates


class SafeJSONResponse(JSONResponse):
    """JSONResponse that replaces lone surrogates (from a file or row written before the server refused
    them) with U+FFFD instead of failing to encode the whole answer."""

    def render(self, content: Any) -> bytes:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return without_surrogates(text).encode("utf-8")
