"""What every benchmark provides: items to answer (from the official files) and scoring of the answers."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lntune.errors import LntuneError

SHORT_ANSWER = "\nAnswer the question using a single word or phrase."


@dataclass
class EvalItem:
    id: str
    """Unique within the benchmark; predictions.jsonl is keyed by it."""
    image: Path | None
    prompt: str
    """The user turn's text (without the image placeholder)."""
    reference: dict = field(default_factory=dict)
    """What scoring needs: ground truth and grouping fields (JSON-serialisable)."""


def read_json(path: Path, what: str):
    if not path.is_file():
        raise LntuneError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise LntuneError(f"{path}:{error.lineno}:{error.colno}: invalid JSON ({error.msg})") from None


def read_json_lines(path: Path, what: str) -> list[dict]:
    if not path.is_file():
        raise LntuneError(f"{what} not found: {path}")
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise LntuneError(f"{path}:{number}:{error.colno}: invalid JSON ({error.msg})") from None
    return records


def require_keys(record: dict, keys, where: str) -> None:
    missing = [key for key in keys if key not in record]
    if missing:
        raise LntuneError(f"{where}: missing {', '.join(missing)} (found keys: {', '.join(sorted(record)) or 'none'})")


def find_image(folder: Path | None, candidates: list[str], where: str) -> Path:
    """The first candidate path that exists under `folder`; the error lists what was tried."""
    if folder is None:
        raise LntuneError(f"{where}: give the image folder with --images")
    for candidate in candidates:
        path = folder / candidate
        if path.is_file():
            return path
    raise LntuneError(f"{where}: image not found; tried {', '.join(str(folder / c) for c in candidates)}")
