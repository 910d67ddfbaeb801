"""The one way benchmark and scoring files are read.

Every problem with a file (missing, unreadable, not UTF-8, not JSON, a record without a field scoring needs, an
answer given twice) is an LntuneError naming the file and the record, raised when the file is loaded, before
any answer is generated or scored.
"""

from __future__ import annotations

import codecs
import json
from pathlib import Path

from lntune.errors import LntuneError


def read_text(path: Path, what: str) -> str:
    """A UTF-8 text file (a leading byte-order mark is allowed); any problem is one LntuneError naming the file."""
    if not path.is_file():
        raise LntuneError(f"{what} not found: {path}" + (" (it is a folder)" if path.is_dir() else ""))
    try:
        data = path.read_bytes()
    except OSError as error:
        raise LntuneError(f"cannot read {what} {path}: {error.strerror or error}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        offset = error.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data.count(b"\n", 0, offset) + 1
        raise LntuneError(
            f"{path}:{line}: not UTF-8 (byte {offset}, 0x{data[offset]:02x}); re-encode the file as UTF-8"
        ) from None


def read_json(path: Path, what: str):
    text = read_text(path, what)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise LntuneError(f"{path}:{error.lineno}:{error.colno}: invalid JSON ({error.msg})") from None


def read_numbered_json_lines(path: Path, what: str) -> list[tuple[int, object]]:
    """(line number, record) for each non-blank line of a JSON Lines file."""
    records = []
    # split("\n"), not splitlines(): a JSON string may hold U+2028 or U+0085 unescaped, and they end no line.
    for number, line in enumerate(read_text(path, what).split("\n"), start=1):
        if line.strip():
            try:
                records.append((number, json.loads(line)))
            except json.JSONDecodeError as error:
                raise LntuneError(f"{path}:{number}:{error.colno}: invalid JSON ({error.msg})") from None
    return records


def require_keys(record, keys, where: str) -> None:
    """record must be a JSON object holding every key; `where` names the file and the record.

    keys: names, or {name: type} to also check each value's JSON type (int, str, list, ...).
    """
    if not isinstance(record, dict):
        raise LntuneError(f"{where}: expected a JSON object with {', '.join(keys)}, got {_json_type(record)}")
    missing = [key for key in keys if key not in record]
    if missing:
        raise LntuneError(f"{where}: missing {', '.join(missing)} (found keys: {', '.join(sorted(record)) or 'none'})")
    if isinstance(keys, dict):
        for key, expected in keys.items():
            kinds = expected if isinstance(expected, tuple) else (expected,)
            value = record[key]
            if not isinstance(value, kinds) or isinstance(value, bool):  # JSON true/false is no integer
                wanted = " or ".join(_JSON_NAMES[kind] for kind in kinds)
                raise LntuneError(f"{where}: {key} must be {wanted}, got {_json_type(value)} {value!r:.40}")


_JSON_NAMES = {int: "an integer", str: "a string", list: "a list", dict: "an object"}


def _json_type(value) -> str:
    return {bool: "true/false", int: "integer", float: "number", str: "string", list: "list", dict: "object",
            type(None): "null"}.get(type(value), type(value).__name__)


def require_list(value, where: str) -> list:
    if not isinstance(value, list):
        raise LntuneError(f"{where}: expected a list, got {_json_type(value)}")
    return value


def refuse_repeats(keys_and_places, describe) -> None:
    """Raise when a key comes twice in (key, place) pairs; describe(key, first place, second place) says where."""
    first_place = {}
    for key, place in keys_and_places:
        if key in first_place:
            raise LntuneError(describe(key, first_place[key], place))
        first_place[key] = place


def answered_twice(path: Path, field: str, per: str = "question"):
    """refuse_repeats' `describe` for a results file that answers one question (or image) twice."""
    return lambda key, first, second: (f"{path}: {field} {key} is answered twice, at {first} and {second}; "
                                       f"keep one answer per {per}")


def find_image(folder: Path | None, candidates: list[str], where: str) -> Path:
    """The first candidate path that exists under `folder`; the error lists what was tried."""
    if folder is None:
        raise LntuneError(f"{where}: give the image folder with --images")
    for candidate in candidates:
        path = folder / candidate
        if path.is_file():
            return path
    raise LntuneError(f"{where}: image not found; tried {', '.join(str(folder / c) for c in candidates)}")
