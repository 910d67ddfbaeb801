"""`lntune data check`: everything worth knowing about a data mix before a long job, in one report."""

from __future__ import annotations

import dataclasses
import statistics

from lntune.config import DataConfig
from lntune.data.images import ImageError, load_image
from lntune.data.mixture import build_mixture
from lntune.errors import LntuneError

EXAMPLES = 5
BUCKETS = (64, 128, 256, 512, 1024, 2048, 4096, 8192)


def check_data(data_config: DataConfig, model: str | None = None, stage: str = "finetune",
               limit: int | None = None) -> dict:
    """The report on `data_config`'s samples (the first `limit` of them): counts, images, duplicate ids, and with a
    built `model` token lengths and the label-mask self-check as training in `stage` would tokenise them.

    Bad records are counted, never fatal: the check reads the data with skip_invalid on, whatever the config says.
    """
    from tqdm.auto import tqdm

    data_config = dataclasses.replace(data_config, skip_invalid=True)
    # Every image is decoded below, so the stat-only up-front check (which would drop them here) is not needed.
    mixture = build_mixture(data_config, seed=0, check_images=False)
    dataset = None
    if model:
        from lntune.data.dataset import SupervisedDataset
        from lntune.model.load import load_llava_config, load_processor

        dataset = SupervisedDataset(mixture, load_processor(model), load_llava_config(model).image_seq_length,
                                    data_config, stage)
    problems = {"missing_images": [], "unreadable_images": [], "mask_check": []}
    lengths, over_limit = [], 0
    first_seen, duplicates = {}, []  # sample id -> where it first appeared; messages for repeats
    count = min(len(mixture), limit) if limit else len(mixture)
    for index in tqdm(range(count), desc="checking", unit="sample", disable=count < 1000):
        record = mixture.record(index)
        if record.id != record.where:  # a record without an id is named by its place, which is unique
            if record.id in first_seen:
                duplicates.append(f"id {record.id!r}: {record.where} and {first_seen[record.id]}")
            else:
                first_seen[record.id] = record.where
        if record.image:
            if data_config.image_folder is None:
                problems["missing_images"].append(f"{record.where}: has an image but no --image-folder was given")
            else:
                try:
                    load_image(data_config.image_folder, record.image, record.where, data_config.max_image_pixels)
                except ImageError as error:
                    key = "missing_images" if "not found" in str(error) else "unreadable_images"
                    problems[key].append(str(error))
        if dataset is not None:
            try:
                input_ids, _ = dataset.tokenize(record)
            except LntuneError as error:
                problems["mask_check"].append(str(error))
                continue
            lengths.append(len(input_ids))
            over_limit += len(input_ids) > data_config.max_length
    invalid = mixture.invalid()
    histogram = {}
    for length in lengths:
        bucket = next((f"<={edge}" for edge in BUCKETS if length <= edge), f">{BUCKETS[-1]}")
        histogram[bucket] = histogram.get(bucket, 0) + 1
    return {
        "ok": not invalid and not any(problems.values()),
        "samples": len(mixture),
        "checked": count,
        "by_type": mixture.counts_by_type(),
        "text_only": mixture.text_only(),
        "text_only_share": mixture.text_only() / max(len(mixture), 1),
        "invalid_records": len(invalid),
        "invalid_examples": invalid[:EXAMPLES],
        **{key: len(value) for key, value in problems.items()},
        **{f"{key}_examples": value[:EXAMPLES] for key, value in problems.items()},
        "template": dataset.prompts.template_name if dataset else None,
        "token_lengths": {
            "min": min(lengths), "median": statistics.median(lengths), "max": max(lengths),
            "p95": sorted(lengths)[int(0.95 * (len(lengths) - 1))],
        } if lengths else None,
        "length_histogram": {key: histogram[key] for key in sorted(histogram, key=_bucket_order)},
        "max_length": data_config.max_length,
        "over_max_length": over_limit,
        "duplicate_ids": len(duplicates),
        "duplicate_ids_examples": duplicates[:EXAMPLES],
    }


def _bucket_order(key: str) -> int:
    return int(key.lstrip("<=>")) + (1 if key.startswith(">") else 0)


def format_report(report: dict) -> str:
    lines = [f"samples: {report['samples']:,} (checked {report['checked']:,})"]
    lines += [f"  {name}: {count:,}" for name, count in report["by_type"].items()]
    lines.append(f"text-only: {report['text_only']:,} ({100 * report['text_only_share']:.1f}%)")
    for key, label in (("invalid_records", "invalid records (skipped)"), ("missing_images", "missing images"),
                       ("unreadable_images", "unreadable images"), ("mask_check", "label-mask self-check failures")):
        examples = report.get(f"{key}_examples") or report.get("invalid_examples" if key == "invalid_records" else "", [])
        lines.append(f"{label}: {report[key]:,}")
        lines += [f"  - {example}" for example in examples]
    if report["token_lengths"]:
        stats = report["token_lengths"]
        lines.append(f"token lengths (image tokens included, template {report['template']}): "
                     f"min {stats['min']}, median {stats['median']}, p95 {stats['p95']}, max {stats['max']}")
        top = max(report["length_histogram"].values())
        for bucket, count in report["length_histogram"].items():
            lines.append(f"  {bucket:>7}  {count:>8,}  {'#' * max(1, round(40 * count / top))}")
        lines.append(f"over max_length {report['max_length']}: {report['over_max_length']:,}")
    else:
        lines.append("token lengths: not computed (pass --model to tokenise and run the label-mask self-check)")
    if report["duplicate_ids"]:
        # A warning, not a problem: training does not need unique ids, but a message naming a sample by its id is
        # ambiguous then.
        lines.append(f"warning: {report['duplicate_ids']:,} samples repeat an earlier sample's id")
        lines += [f"  - {example}" for example in report["duplicate_ids_examples"]]
    lines.append("OK" if report["ok"] else "PROBLEMS FOUND (see above)")
    return "\n".join(lines)
