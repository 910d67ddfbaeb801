"""`lntune data show`: what the model sees, for debugging data and templates.

Training view (`--data FILE`): the rendered text, ids and labels of samples exactly as the trainer builds them
(SupervisedDataset.tokens: template, system, image placement, BOS id, image tokens expanded, over-length policy).
Generation view (`--bench B --data FILE`): the ids a benchmark question is answered from, exactly as `lntune eval`
builds them (GenerationPrompts). Both are the production code paths, not re-implementations.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lntune.errors import LntuneError
from lntune.prompt import IGNORE_INDEX


@dataclass(frozen=True)
class ShowRequest:
    model: str
    data: str
    indices: tuple[int, ...] | None = None
    """Sample / item positions to show (None: all of them)."""
    image_folder: str | None = None
    bench: str | None = None
    template: str = "auto"
    stage: str = "finetune"
    system: str | None = None
    image_placement: str = "front"
    max_length: int = 2048
    prompt: str | None = None
    """Benchmarks: the prompt template ({question}), as `lntune eval --prompt`."""


def _chosen(indices, count: int, what: str) -> list[int]:
    if indices is None:
        return list(range(count))
    wrong = [index for index in indices if not 0 <= index < count]
    if wrong:
        raise LntuneError(f"--index {wrong[0]} is out of range: {what} has {count} (indices 0..{count - 1})")
    return list(indices)


def training_view(request: ShowRequest) -> list[dict]:
    from lntune.config import DataConfig, DataSource
    from lntune.data.dataset import SkipSample, SupervisedDataset
    from lntune.data.mixture import Mixture
    from lntune.data.records import RecordFile
    from lntune.model.load import load_llava_config, load_processor

    records = RecordFile(request.data)
    config = DataConfig(sources=(DataSource(request.data),), image_folder=request.image_folder,
                        template=request.template, system=request.system, image_placement=request.image_placement,
                        max_length=request.max_length)
    # A mixture of the whole file in file order, so --index N is the file's sample N.
    mixture = Mixture(files=[records], items=[(0, index) for index in range(len(records))])
    dataset = SupervisedDataset(mixture, load_processor(request.model),
                                load_llava_config(request.model).image_seq_length, config, request.stage)
    rows = []
    for index in _chosen(request.indices, len(records), request.data):
        record = records[index]
        row = {"index": index, "id": record.id, "text": dataset.prompts.render(record.messages)}
        try:
            row["input_ids"], row["labels"], truncated = dataset.tokens(record)
            if truncated:
                row["truncated_to"] = request.max_length
        except SkipSample as reason:
            row["input_ids"], row["labels"], row["skipped"] = [], [], str(reason)
        rows.append(row)
    return rows


def generation_view(request: ShowRequest) -> list[dict]:
    from lntune.eval.benchmarks import get_benchmark
    from lntune.eval.generate import GenerationPrompts
    from lntune.model.load import load_llava_config, load_processor

    items = get_benchmark(request.bench).load(Path(request.data), Path(request.image_folder) if request.image_folder
                                              else None, request.prompt)
    prompts = GenerationPrompts(load_processor(request.model), load_llava_config(request.model).image_seq_length,
                                request.template, request.system)
    rows = []
    for index in _chosen(request.indices, len(items), f"{request.bench} ({request.data})"):
        item = items[index]
        ids = prompts.ids(item.prompt, item.image is not None)
        turns = [prompts.builder.user_turn(item.prompt, item.image is not None)]
        rows.append({"index": index, "question_id": item.id, "text": prompts.builder.render(turns, True),
                     "input_ids": ids})
    return rows


def show(request: ShowRequest) -> list[dict]:
    return generation_view(request) if request.bench else training_view(request)


def format_rows(rows: list[dict], tokenizer, image_token_id: int) -> str:
    """A readable view: the ids decoded back, supervised spans between ⟦ ⟧, image tokens counted."""
    blocks = []
    for row in rows:
        name = row.get("id", row.get("question_id"))
        ids, labels = row["input_ids"], row.get("labels") or [IGNORE_INDEX] * len(row["input_ids"])
        supervised = sum(label != IGNORE_INDEX for label in labels)
        header = f"── #{row['index']} {name}: {len(ids)} tokens"
        header += f", {supervised} supervised" if "labels" in row else " (generation prompt)"
        if "truncated_to" in row:
            header += f", truncated to {row['truncated_to']}"
        if "skipped" in row:
            blocks.append(f"{header}\nskipped in training: {row['skipped']}")
            continue
        pieces, start = [], 0
        while start < len(ids):  # runs of tokens alike in kind: image, supervised, context
            kind = "image" if ids[start] == image_token_id else labels[start] != IGNORE_INDEX
            end = start
            while end < len(ids) and ("image" if ids[end] == image_token_id else labels[end] != IGNORE_INDEX) == kind:
                end += 1
            if kind == "image":
                pieces.append(f"<image × {end - start}>")
            else:
                text = tokenizer.decode(ids[start:end], skip_special_tokens=False)
                pieces.append(f"⟦{text}⟧" if kind else text)
            start = end
        blocks.append(f"{header}\n{''.join(pieces)}")
    return "\n\n".join(blocks)
