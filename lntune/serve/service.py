"""ChatService: everything behind the HTTP routes: the model, its adapters, the request builder and the batcher."""

from __future__ import annotations

import time
from pathlib import Path

from lntune.adapter import MANIFEST
from lntune.errors import LntuneError
from lntune.serve.adapters import ServedModel, load_adapter_set
from lntune.serve.batcher import Batcher
from lntune.serve.chat_request import RequestBuilder
from lntune.serve.decoding import Decoder
from lntune.serve.errors import ServeError
from lntune.serve.settings import ServeSettings


def adapter_folder(folder: Path) -> Path | None:
    """`folder` if it is an adapter, its `adapter/` if it is a run folder holding one, else None."""
    if (folder / MANIFEST).is_file():
        return folder
    if (folder / "adapter" / MANIFEST).is_file():
        return folder / "adapter"
    return None


def adapters_in(directory: Path) -> dict[str, Path]:
    """Every adapter (or run folder with one) directly inside `directory`, by folder name."""
    if not directory.is_dir():
        raise LntuneError(f"--adapters-dir {directory} is not a folder")
    found = {}
    for child in sorted(directory.iterdir()):
        folder = adapter_folder(child) if child.is_dir() else None
        if folder is not None:
            found[child.name] = folder
    return found


class ChatService:
    def __init__(self, model_dir: str | Path, settings: ServeSettings | None = None,
                 adapters: dict[str, str | Path] | None = None, adapters_dir: str | Path | None = None,
                 dtype: str = "auto", device: str | None = None, say=print):
        from lntune.model.load import load_processor

        self.settings = settings or ServeSettings()
        self.say = say
        self.model_dir = Path(model_dir)
        self.adapters_dir = Path(adapters_dir).expanduser().resolve() if adapters_dir else None
        found = adapters_in(self.adapters_dir) if self.adapters_dir else {}
        self.adapters = load_adapter_set(self.model_dir, {**found, **(adapters or {})}, dtype, device)
        model = self.adapters.model
        processor = load_processor(self.model_dir)
        if self.adapters.unbanked_norms:
            classes = sorted(set(self.adapters.unbanked_norms.values()))
            say(f"lntune serve: {len(self.adapters.unbanked_norms)} norms ({', '.join(classes)}) compute a formula "
                "lntune does not bank; adapters changing them are served with their rows grouped per adapter")
        text_config = model.config.get_text_config(decoder=True)
        context = getattr(text_config, "max_position_embeddings", None) or 1 << 30
        self.requests = RequestBuilder(processor, model.config.image_seq_length, context, self.settings)
        self._check_prompts(self.adapters.base)
        for served in list(self.adapters.adapters.values()):
            try:
                self._check_prompts(served)
            except ServeError as error:
                raise LntuneError(f"adapter {served.name} ({served.path}): {error}") from None
        self.decoder = Decoder(model, processor.tokenizer, self.adapters)
        self.batcher = Batcher(self.decoder, self.settings.max_batch, self.settings.batch_wait_ms,
                               self.settings.max_queue, say=say, join=self.settings.join_running)
        self.created = int(time.time())

    def start(self) -> None:
        self.batcher.start()

    def stop(self, timeout: float | None = None) -> None:
        self.batcher.stop(timeout)

    def models(self) -> list[dict]:
        return [served.card(self.created) for served in self.adapters.served()]

    def load_adapter(self, name: str, path: str) -> ServedModel:
        if self.adapters_dir is None:
            raise ServeError("loading adapters at run time is off; start the server with --adapters-dir DIR and load "
                             "adapters from inside DIR", 403, "path", "adapters_dir_not_set")
        candidate = Path(path).expanduser()
        resolved = (candidate if candidate.is_absolute() else self.adapters_dir / candidate).resolve()
        if resolved != self.adapters_dir and self.adapters_dir not in resolved.parents:
            raise ServeError(f"adapter path {path!r} is outside --adapters-dir; only adapters inside it can be loaded",
                             403, "path", "outside_adapters_dir")
        folder = adapter_folder(resolved) if resolved.is_dir() else None
        if folder is None:
            raise ServeError(f"{path!r} inside --adapters-dir is not an adapter folder (no {MANIFEST}, nor "
                             f"adapter/{MANIFEST})", 404 if not resolved.exists() else 400, "path", "adapter_not_found")
        return self._check_prompts(self.adapters.load(name, folder))

    def _check_prompts(self, served: ServedModel) -> ServedModel:
        """The served model's recorded template and system prompt must make a prompt builder: found at loading,
        not at its first request (an adapter that cannot be asked anything is unloaded again)."""
        try:
            self.requests.prompts(served)
        except ServeError:
            if served.kind == "adapter":
                self.adapters.unload(served.name)
            raise
        return served
