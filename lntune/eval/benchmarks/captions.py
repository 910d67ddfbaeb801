"""COCO and Flickr30k captioning on Karpathy's test split (also BLIP's and COCO-format caption files)."""

from __future__ import annotations

from pathlib import Path

from lntune.errors import LntuneError
from lntune.eval.benchmarks.base import Benchmark, EvalItem
from lntune.eval.benchmarks.files import (
    answered_twice, find_image, read_json, refuse_repeats, require_keys, require_list,
)
from lntune.eval.metrics import captions as metric


def read_references(path: Path, split: str = "test") -> dict[str, dict]:
    """image id -> {"image": relative path candidates, "references": [captions]} for any accepted layout."""
    data = read_json(path, "caption annotations")
    entries = {}
    if isinstance(data, dict) and "images" in data and "annotations" not in data:
        # Karpathy: dataset_coco.json / dataset_flickr30k.json
        for number, image in enumerate(require_list(data["images"], f"{path}: images")):
            where = f"{path}: images[{number}]"
            require_keys(image, {"filename": str, "sentences": list}, where)
            if image.get("split") != split:
                continue
            for position, sentence in enumerate(image["sentences"]):
                require_keys(sentence, {"raw": str}, f"{where}.sentences[{position}]")
            image_id = str(image.get("cocoid", image.get("imgid", image["filename"])))
            relative = [f"{image['filepath']}/{image['filename']}"] if image.get("filepath") else []
            entries[image_id] = {"image": relative + [image["filename"]],
                                 "references": [sentence["raw"] for sentence in image["sentences"]]}
    elif isinstance(data, dict) and "annotations" in data:
        # COCO format: captions_<split>.json
        for number, image in enumerate(require_list(data.get("images", []), f"{path}: images")):
            require_keys(image, {"id": (int, str), "file_name": str}, f"{path}: images[{number}]")
        names = {image["id"]: image["file_name"] for image in data.get("images", [])}
        for number, annotation in enumerate(require_list(data["annotations"], f"{path}: annotations")):
            require_keys(annotation, {"image_id": (int, str), "caption": str}, f"{path}: annotations[{number}]")
            image_id = str(annotation["image_id"])
            name = names.get(annotation["image_id"], f"{annotation['image_id']}.jpg")
            entry = entries.setdefault(image_id, {"image": [name], "references": []})
            entry["references"].append(annotation["caption"])
    elif isinstance(data, list):
        # BLIP: coco_karpathy_test.json = [{"image": "val2014/...jpg", "caption": [..]}]
        for number, record in enumerate(data):
            where = f"{path}: [{number}]"
            require_keys(record, {"image": str, "caption": (list, str)}, where)
            captions = record["caption"] if isinstance(record["caption"], list) else [record["caption"]]
            for position, caption in enumerate(captions):
                if not isinstance(caption, str):
                    raise LntuneError(f"{where}.caption[{position}]: must be a string, got {caption!r:.40}")
            if Path(record["image"]).stem in entries:
                raise LntuneError(f"{where}: image {record['image']} again; list each image once with all its captions")
            entries[Path(record["image"]).stem] = {"image": [record["image"], Path(record["image"]).name],
                                                   "references": captions}
    else:
        raise LntuneError(f"{path}: not a Karpathy, BLIP or COCO-format caption file")
    if not entries:
        raise LntuneError(f"{path}: no images in split {split!r}")
    return entries


class Captions(Benchmark):
    """Captioning on a test split; CocoCaptions and Flickr30kCaptions differ only in name."""

    default_prompt = "Provide a one-sentence caption for the provided image."
    max_new_tokens = 48
    modes = ("official",)
    default_mode = "official"
    asks_questions = False
    scoring_files = ("annotations", "results")

    def load(self, data: Path, images: Path | None, prompt: str | None) -> list[EvalItem]:
        items = []
        for image_id, entry in read_references(data).items():
            items.append(EvalItem(
                id=image_id, image=find_image(images, entry["image"], f"{data}: image {image_id}"),
                prompt=prompt or self.default_prompt, reference={"references": entry["references"]},
            ))
        return items

    def score(self, items: list[EvalItem], predictions: dict[str, str], mode: str) -> dict:
        answered = [item for item in items if item.id in predictions]
        return metric.score_captions(
            {item.id: item.reference["references"] for item in answered},
            {item.id: predictions[item.id] for item in answered},
        )

    def score_files(self, mode: str, *, annotations: Path, results: Path) -> dict:
        """results ([{image_id, caption}], as official_results writes) against the caption annotations."""
        references = {key: entry["references"] for key, entry in read_references(annotations).items()}
        answers = require_list(read_json(results, "caption results"),
                               f"{results} (expected [{{image_id, caption}}, ...])")
        for index, answer in enumerate(answers):
            require_keys(answer, {"image_id": (int, str), "caption": str}, f"{results}: [{index}]")
        # 1 and "1" name the same image (ids are compared as text).
        refuse_repeats(((str(a["image_id"]), f"[{i}]") for i, a in enumerate(answers)),
                       answered_twice(results, "image_id", "image"))
        return metric.score_captions(references, {str(a["image_id"]): a["caption"] for a in answers})

    def official_results(self, items: list[EvalItem], predictions: dict[str, str]) -> list[dict]:
        def image_id(value: str):
            return int(value) if value.isdigit() else value

        return [{"image_id": image_id(item.id), "caption": predictions[item.id]} for item in items if item.id in predictions]


class CocoCaptions(Captions):
    name = "coco"


class Flickr30kCaptions(Captions):
    name = "flickr30k"
