"""Reading the comparison JSON files a command line names, with errors that name the file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

__all__ = ["read_comparisons"]


def read_comparisons(paths: Iterable[Path], kind: str) -> list[dict]:
    """Each file's JSON object, in order.

    Raises:
        ValueError: a file that cannot be read or is not a JSON object, named as ``kind`` and its path.
    """
    loaded = []
    for path in paths:
        try:
            value = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{kind} {path} cannot be read as JSON: {error}") from None
        if not isinstance(value, dict):
            raise ValueError(f"{kind} {path} holds a JSON {type(value).__name__}, not a comparison (an object).")
        loaded.append(value)
    return loaded
