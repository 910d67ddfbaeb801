"""Several data sources -> one deterministic list of (source, record) pairs.

`--data conversation=conv58k.json:20000 --data detail=detail23k.json:20000` or `--types conversation`:
the paper's data-type study is a selection here, reproducible from the seed.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field

from lntune.config import DataConfig, DataSource
from lntune.data.images import find_unusable_images
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
    unusable_images: list[str] = field(default_factory=list)
    """Samples dropped before training because their image is outside the image folder or missing
    (only with skip_invalid; without it they stop the run)."""

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


SHOWN_OFFENDERS = 20


def build_mixture(config: DataConfig, seed: int, check_images: bool = True) -> Mixture:
    """The selected samples. With `check_images` and an image folder, every selected sample's image is checked
    first (inside the image folder, an existing file: stat calls, no decoding), so a bad path stops the job before the first step
    with all offenders listed, or, with skip_invalid, the sample is dropped and counted."""
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
    if not check_images:
        return Mixture(files, items)
    items, unusable = _drop_unusable_images(config, files, items)
    return Mixture(files, items, unusable)


def _drop_unusable_images(config: DataConfig, files: list[RecordFile], items: list[tuple[int, int]]):
    """(items whose image is usable or absent, messages for the dropped ones); raises without skip_invalid."""
    if config.image_folder is None:
        return items, []  # nothing to check against; a sample with an image then says so when it is drawn
    with_image = [(item, files[item[0]].image_path(item[1])) for item in items if files[item[0]].has_image[item[1]]]
    if not with_image:
        return items, []
    problems = find_unusable_images(config.image_folder, with_image)
    if not problems:
        return items, []
    problems.sort(key=lambda problem: problem[0])  # in file order, not in the order they were found

    def describe(item, relative, why, full=False):
        file, index = files[item[0]], item[1]
        # The record's own `where` (with its id) costs a decode: only for the offenders shown in an error.
        where = file[index].where if full else f"{file.path}: sample {index} (line {file.lines[index]})"
        return f"{where}: image {relative!r} {why}"

    shown = "; ".join(describe(*problem, full=True) for problem in problems[:SHOWN_OFFENDERS])
    more = f"; and {len(problems) - SHOWN_OFFENDERS:,} more" if len(problems) > SHOWN_OFFENDERS else ""
    summary = (f"{len(problems):,} of {len(with_image):,} selected samples with an image cannot use it "
               f"(image folder {config.image_folder}): {shown}{more}")
    if not config.skip_invalid:
        raise LntuneError(f"{summary}. Fix the paths or --image-folder, or pass --skip-invalid to drop and count "
                          f"these samples")
    if len(problems) == len(items):
        raise LntuneError(f"every selected sample was dropped: {summary}. Is --image-folder right?")
    bad = {item for item, _, _ in problems}
    return [item for item in items if item not in bad], [describe(*problem) for problem in problems]
