"""Several adapters of one base answering together: `lntune eval` / `lntune chat` with `--adapter NAME=DIR` flags.

One copy of the base model holds every adapter in the serving banks (lntune.serve.adapters.AdapterSet: norm banks,
grouped modules); a batch mixes questions of several adapters, and each row runs with its own adapter's tensors in
the same forward passes (the rows are selected around transformers' `generate`, which keeps every row of the batch to
the end). Each adapter is asked as `lntune eval --adapter DIR` asks it alone (its recorded template, system prompt and
image aspect ratio), and its greedy answers are the same (tests/eval/test_eval_mixed.py).
"""

from __future__ import annotations

from pathlib import Path

from lntune.errors import LntuneError


class MixedAnswerer:
    def __init__(self, adapters, generators: dict):
        self.adapters = adapters
        """The AdapterSet: the shared model and its banks."""
        self.generators = generators
        """name -> an AnswerGenerator on the shared model, with that adapter's prompts and image aspect ratio."""

    @property
    def processor(self):
        return next(iter(self.generators.values())).processor

    def answer(self, names: list[str], questions: list[str], images: list, max_new_tokens: int) -> list[str]:
        """Greedy answers; question i is asked of adapter names[i] (its own prompt template), all in one batch."""
        prompts = [self.generators[name].prompt_ids(question, image is not None)
                   for name, question, image in zip(names, questions, images)]
        return self.generate(names, prompts, images, max_new_tokens)

    def generate(self, names: list[str], prompts: list[list[int]], images: list, max_new_tokens: int) -> list[str]:
        sequence_rows, image_rows = self.adapters.rows(names, [int(image is not None) for image in images])
        with self.adapters.lock, self.adapters.selection.use(sequence_rows, image_rows):
            # AnswerGenerator.generate uses only what every view shares (model, processor, tokenizer)
            return self.generators[names[0]].generate(prompts, images, max_new_tokens)


def load_mixed(model_dir: str, adapters: dict[str, str], template: str = "auto", system: str | None = None,
               image_aspect_ratio: str | None = None, dtype: str = "auto") -> MixedAnswerer:
    """The base of `model_dir` with every adapter of `adapters` (name -> adapter folder) loaded into the banks."""
    from lntune.adapter import check_adapter
    from lntune.eval.runner import generator_settings, make_generator
    from lntune.model.load import load_processor
    from lntune.serve.adapters import NAME_PATTERN, load_adapter_set

    settings = {}
    for name, folder in adapters.items():  # every adapter checked before the weights are read
        where = f"--adapter {name}={folder}"
        if not NAME_PATTERN.match(name):
            raise LntuneError(f"{where}: the name must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                              "letter or digit")
        try:
            manifest = check_adapter(Path(folder))
        except LntuneError as error:
            raise LntuneError(f"{where}: {error}") from None
        if manifest["lora"]:
            raise LntuneError(f"{where} is a LoRA adapter; only adapters of the model's own tensors are decoded "
                              "together. Evaluate it alone (--adapter DIR), or merge it (lntune merge) and evaluate "
                              "the merged model")
        settings[name] = generator_settings(model_dir, folder, template, system, image_aspect_ratio)
    adapter_set = load_adapter_set(model_dir, adapters, dtype)
    processor = load_processor(model_dir)
    return MixedAnswerer(adapter_set, {name: make_generator(adapter_set.model, processor, settings[name])
                                       for name in adapters})
