"""Several data sources -> one deterministic list of (source, record) pairs.

`--data conversation=conv58k.json:20000 --data detail=detail23k.json:20000` or `--types conversation`:
the paper's data-type study is a selection here, reproducible from the seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from lntune.config import DataConfig, DataSource
from lntune.data.records import RecordFile
from lntune.errors import LntuneError

_SPEC = re.compile(r"^(?:(?P<type>[A-Za-z0-9_\-]+)=)?(?P<path>.+?)(?::(?P<count>\d+))?$")


def parse_data_spec(spec: str) -> DataSource:
    """`[TYPE=]PATH[:COUNT]` -> DataSource."""
    match = _SPEC.match(spec.strip())
    if not match or not match.group("path"):
        raise LntuneError(f"data spec {spec!r} must look like [TYPE=]PATH[:COUNT], e.g. conversation=conv.json:20000")
    count = match.group("count")
    return DataSource(path=match.group("path"), type=match.group("type"), count=int(count) if count else None)


@dataclass
class Mixture:
    files: list[RecordFile]
    items: list[tuple[int, int]]
    """(file index, record index) for every selected sample, in a fixed order."""

    def __len__(self) -> int:
        return len(self.items)

    def record(self, index: int):
        file_index, record_index = self.items[index]
        return self.files[file_index][record_index]

    def counts_by_type(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for file_index, record_index in self.items:
            name = self.files[file_index].type_of(record_index) or "untyped"
            counts[name] = counts.get(name, 0) + 1
        return counts

    def text_only(self) -> int:
        return sum(1 for f, r in self.items if not self.files[f].has_image[r])

    def modality_lengths(self) -> tuple[list[bool], list[int]]:
        """Per sample, in mixture order: whether it has an image, and its conversation's length in characters."""
        has_image = [bool(self.files[f].has_image[r]) for f, r in self.items]
        lengths = [self.files[f].text_chars[r] for f, r in self.items]
        return has_image, lengths

    def invalid(self) -> list[str]:
        return [message for file in self.files for message in file.invalid]


def build_mixture(config: DataConfig, seed: int) -> Mixture:
    files, items = [], []
    for source_index, source in enumerate(config.sources):
        file = RecordFile(source.path, source_type=source.type, skip_invalid=config.skip_invalid)
        candidates = range(len(file))
        if config.types is not None:
            candidates = [i for i in candidates if file.type_of(i) in config.types]
        candidates = list(candidates)
        if source.count is not None:
            if source.count > len(candidates):
                kept = f" of types {', '.join(config.types)}" if config.types else ""
                raise LntuneError(
                    f"{source.path}: {source.count} samples asked for, but it has only {len(candidates)}{kept}"
                )
            # Seeded per source, so adding a source does not change what the others draw.
            candidates = sorted(random.Random(f"{seed}:{source_index}:{source.path}").sample(candidates, source.count))
        files.append(file)
        items.extend((len(files) - 1, index) for index in candidates)
    if not items:
        wanted = f" of types {', '.join(config.types)}" if config.types else ""
        raise LntuneError(f"no samples{wanted} in {', '.join(s.path for s in config.sources)}")
    return Mixture(files, items)
