"""JSON files, written one way everywhere: strict JSON, written atomically.

Every JSON file the package writes goes through :func:`write_json` (datasets, results, metrics,
panoptic predictions) or :func:`append_jsonl` (a training run's ``metrics.jsonl``):

- strict JSON: NaN and infinities become ``null``, tensors and NumPy numbers become Python
  numbers (:func:`json_ready`), so any JSON reader accepts the file;
- atomic: the text goes to a temporary file beside the target, which then replaces it in one
  step, so a reader (or a run killed mid-write) never sees half a file;
- ``canonical=True`` (sorted keys, no spaces): the same data gives the same bytes, which is
  what makes the shapes dataset reproducible byte for byte.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Optional, Union

PathLike = Union[str, Path]


def json_ready(value: Any) -> Any:
    """Plain JSON data: mappings, lists and tuples recursively; tensors, NumPy arrays and NumPy
    scalars through ``tolist()``; NaN and ±inf as ``None``."""
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return json_ready(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _dumps(data: Any, indent: Optional[int], canonical: bool) -> str:
    if canonical:
        return json.dumps(json_ready(data), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return json.dumps(json_ready(data), indent=indent, allow_nan=False)


def write_json(path: PathLike, data: Any, indent: Optional[int] = None,
               canonical: bool = False) -> None:
    """Write ``data`` to ``path`` as strict JSON and a final newline, atomically; the folder is
    created if needed. ``indent`` for people, ``canonical`` for reproducible bytes."""
    text = _dumps(data, indent, canonical) + "\n"  # fails, if it does, before any file is made
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(temporary, "w", encoding="utf-8", newline="\n") as file:
        file.write(text)
    os.replace(temporary, path)


def append_jsonl(path: PathLike, entry: Mapping) -> None:
    """Append one entry to a JSON-lines file as one strict-JSON line."""
    with open(path, "a", encoding="utf-8", newline="\n") as file:
        file.write(_dumps(entry, None, False) + "\n")
