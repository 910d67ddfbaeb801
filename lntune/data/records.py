"""LLaVA-format records, read lazily from JSON list or JSON Lines files.

Opening a file builds an index (byte offsets, each record's type tag, whether it has an image, its text length
in characters as a cheap length estimate for batching) in one pass, validating every record's structure on the way,
so a bad record stops the job before training starts rather than hours in. The index also keeps each record's image
path (packed in one byte string), so every image can be checked before training without decoding a record again.
Records themselves are decoded again only when accessed: the index costs a few dozen bytes per record, not its
parsed contents.
"""

from __future__ import annotations

import json
import os
from array import array
from dataclasses import dataclass
from pathlib import Path

from lntune.errors import LntuneError
from lntune.prompt import IMAGE_TOKEN

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


@dataclass(frozen=True)
class Record:
    id: str
    image: str | None
    """Image path relative to the image folder; None for text-only samples."""
    messages: tuple[tuple[str, str], ...]
    """(role, text) pairs with roles system / user / assistant, validated to alternate."""
    type: str | None
    where: str
    """`file: sample N (id X, line L)`, for error messages."""


class InvalidRecord(LntuneError):
    pass


def parse_record(obj, where: str, source_type: str | None = None) -> Record:
    """Validate one decoded JSON object as a LLaVA sample; raise InvalidRecord saying what is wrong."""
    if not isinstance(obj, dict):
        raise InvalidRecord(f"{where}: a sample must be a JSON object, got {type(obj).__name__}")
    sample_id = str(obj.get("id", "")) or None
    if sample_id is not None:
        where = where.replace("(line", f"(id {sample_id}, line") if "(line" in where else f"{where} (id {sample_id})"
    conversations = obj.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise InvalidRecord(f"{where}: missing or empty 'conversations' list")
    messages = []
    for number, turn in enumerate(conversations):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise InvalidRecord(f"{where}: turn {number} must be an object with 'from' and 'value'")
        role = ROLES.get(turn["from"])
        if role is None:
            raise InvalidRecord(f"{where}: turn {number} has unknown 'from' {turn['from']!r}; valid: human, gpt, system")
        if not isinstance(turn["value"], str) or not turn["value"].strip():
            raise InvalidRecord(f"{where}: turn {number} ({turn['from']}) is empty")
        messages.append((role, turn["value"]))
    dialogue = messages[1:] if messages[0][0] == "system" else messages
    for number, (role, _) in enumerate(dialogue):
        expected = "user" if number % 2 == 0 else "assistant"
        if role != expected:
            raise InvalidRecord(
                f"{where}: turns out of order: turn {number + len(messages) - len(dialogue)} is {role}, expected "
                f"{expected} (a conversation alternates human, gpt, ... and starts with human)"
            )
    if not dialogue or dialogue[-1][0] != "assistant":
        raise InvalidRecord(f"{where}: the conversation must end with a gpt turn (nothing to learn otherwise)")
    image = obj.get("image")
    placeholders = sum(text.count(IMAGE_TOKEN) for role, text in messages if role == "user")
    misplaced = sum(text.count(IMAGE_TOKEN) for role, text in messages if role != "user")
    if image is not None and not isinstance(image, str):
        raise InvalidRecord(f"{where}: 'image' must be one relative path (multi-image samples are not supported)")
    if misplaced:
        raise InvalidRecord(f"{where}: {IMAGE_TOKEN} may only appear in human turns")
    if image and placeholders != 1:
        raise InvalidRecord(
            f"{where}: has an image but {placeholders} {IMAGE_TOKEN} placeholders in its human turns (need exactly 1)"
        )
    if not image and placeholders:
        raise InvalidRecord(f"{where}: has {IMAGE_TOKEN} in its text but no 'image'")
    sample_type = obj.get("type", source_type)
    return Record(
        id=sample_id or where,
        image=image or None,
        messages=tuple(messages),
        type=str(sample_type) if sample_type is not None else None,
        where=where,
    )


def _line_column(text: str, position: int) -> tuple[int, int]:
    line = text.count("\n", 0, position) + 1
    return line, position - (text.rfind("\n", 0, position) + 1) + 1


class RecordFile:
    """Lazy, validated access to one LLaVA data file (JSON list or JSON Lines)."""

    def __init__(self, path: str | Path, source_type: str | None = None, skip_invalid: bool = False):
        self.path = Path(path).expanduser()
        self.source_type = source_type
        self.skip_invalid = skip_invalid
        self.starts = array("q")
        self.ends = array("q")
        self.lines = array("q")
        self.type_codes = array("i")
        self.type_names: list[str | None] = []
        self.has_image = bytearray()
        self._image_paths = bytearray()
        """Every record's image path, UTF-8, back to back (text-only records add nothing)."""
        self._image_ends = array("q")
        """Where each record's image path ends in _image_paths."""
        self.text_chars = array("q")
        """Characters in the record's conversation text: the sampler's length estimate (group_by_modality_length)."""
        self.invalid: list[str] = []
        """Messages for records skipped as invalid (only with skip_invalid)."""
        self._fd = None
        self._index()

    # ---- indexing ----------------------------------------------------------------------------------

    def _index(self) -> None:
        if not self.path.is_file():
            raise LntuneError(f"data file not found: {self.path}")
        raw = self.path.read_bytes()
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            line = raw.count(b"\n", 0, error.start) + 1
            raise LntuneError(
                f"{self.path}: not UTF-8 text at byte {error.start} (line {line}); re-encode the file as UTF-8"
            ) from None
        del raw
        first = text.lstrip()[:1]
        if first == "[":
            self._index_json_list(text)
        elif first in ("{", ""):
            self._index_json_lines(text)
        else:
            raise LntuneError(f"{self.path}: expected a JSON list ('[') or JSON Lines ('{{'), found {first!r}")

    def _add(self, obj, where: str, start_byte: int, end_byte: int, line: int) -> None:
        try:
            record = parse_record(obj, where, self.source_type)
        except InvalidRecord as error:
            if not self.skip_invalid:
                raise LntuneError(f"{error} (or pass --skip-invalid to skip and count such samples)") from None
            self.invalid.append(str(error))
            return
        code = self._type_code(record.type)
        self.starts.append(start_byte)
        self.ends.append(end_byte)
        self.lines.append(line)
        self.type_codes.append(code)
        self.has_image.append(1 if record.image else 0)
        if record.image:
            self._image_paths += record.image.encode("utf-8")
        self._image_ends.append(len(self._image_paths))
        self.text_chars.append(sum(len(text) for _, text in record.messages))

    def _type_code(self, name: str | None) -> int:
        if name not in self.type_names:
            self.type_names.append(name)
        return self.type_names.index(name)

    def _index_json_list(self, text: str) -> None:
        decoder = json.JSONDecoder()
        position = text.index("[") + 1
        # Byte offsets (for reading samples back with pread) advance by the UTF-8 size of the text consumed.
        char_mark, byte_mark = 0, 0
        line, line_mark = 1, 0  # counted incrementally: recounting from 0 per sample would be quadratic
        count = 0
        while True:
            while position < len(text) and text[position] in " \t\r\n":
                position += 1
            if position >= len(text):
                line, column = _line_column(text, position)
                raise LntuneError(f"{self.path}:{line}:{column}: the JSON list is not closed with ']'")
            if text[position] == "]":
                return
            if count and text[position] == ",":
                position += 1
                while position < len(text) and text[position] in " \t\r\n":
                    position += 1
            elif count:
                line, column = _line_column(text, position)
                raise LntuneError(f"{self.path}:{line}:{column}: invalid JSON: expected ',' or ']' after sample {count - 1}")
            try:
                obj, end = decoder.raw_decode(text, position)
            except json.JSONDecodeError as error:
                line, column = _line_column(text, error.pos)
                raise LntuneError(f"{self.path}:{line}:{column}: invalid JSON in sample {count} ({error.msg})") from None
            start_byte = byte_mark + len(text[char_mark:position].encode("utf-8"))
            end_byte = start_byte + len(text[position:end].encode("utf-8"))
            char_mark, byte_mark = end, end_byte
            line += text.count("\n", line_mark, position)
            line_mark = position
            self._add(obj, f"{self.path}: sample {count} (line {line})", start_byte, end_byte, line)
            position = end
            count += 1

    def _index_json_lines(self, text: str) -> None:
        byte_position = 0
        for number, line_text in enumerate(text.splitlines(keepends=True), start=1):
            size = len(line_text.encode("utf-8"))
            if line_text.strip():
                try:
                    obj = json.loads(line_text)
                except json.JSONDecodeError as error:
                    message = f"{self.path}:{number}:{error.colno}: invalid JSON ({error.msg})"
                    if not self.skip_invalid:
                        raise LntuneError(message + " (or pass --skip-invalid to skip and count such lines)") from None
                    self.invalid.append(message)
                else:
                    self._add(obj, f"{self.path}: sample {len(self.starts) + len(self.invalid)} (line {number})",
                              byte_position, byte_position + size, number)
            byte_position += size

    # ---- access ------------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.starts)

    def type_of(self, index: int) -> str | None:
        return self.type_names[self.type_codes[index]]

    def image_path(self, index: int) -> str | None:
        """Record `index`'s image path (relative to the image folder), from the index; None if text-only."""
        start = self._image_ends[index - 1] if index else 0
        end = self._image_ends[index]
        return self._image_paths[start:end].decode("utf-8") if end > start else None

    def __getitem__(self, index: int) -> Record:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_RDONLY)
        length = self.ends[index] - self.starts[index]
        data = os.pread(self._fd, length, self.starts[index])
        where = f"{self.path}: sample {index} (line {self.lines[index]})"
        return parse_record(json.loads(data), where, self.source_type)

    def __getstate__(self):
        # DataLoader workers reopen the file themselves.
        state = dict(self.__dict__)
        state["_fd"] = None
        return state

    def __del__(self):
        if getattr(self, "_fd", None) is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
