"""AdapterSet: one copy of the base model serving the base and every loaded adapter, mixed in one batch.

At start every norm of the language model (block norms and the final norm) is wrapped in a BankedNorm; loading an
adapter writes its norm tensors into a free row of the banks. A norm whose formula lntune does not know (see
norm_bank.py) is left as it is and served like the modules below: slower, equally exact. Tensors of other modules (connector, embeddings, output
head, the linear layers `attn-qv` / `attn-mlp` / `full` train) become overrides of a GroupedModule wrapped around the
module that owns them; images are the rows of connector modules, sequences the rows of all others. Adapters that
would change the vision encoder (no lntune method trains it) and LoRA adapters (PEFT wraps the model; serve the merged
model instead: `lntune merge`) are refused.

Every adapter carries its own prompt settings (template, system) and image aspect ratio, read from its manifest as
`lntune eval` reads them, so a request is built as evaluation builds the same question for that adapter.

`lock` is held by the decoder for a whole batch and by load / unload, so the banks never change under a forward pass.
"""

from __future__ import annotations

import contextlib
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lntune.adapter import TRAINABLE_FILE, check_adapter, fingerprint
from lntune.data.images import EVALUATION_ASPECT_RATIO, recorded_aspect_ratio
from lntune.errors import LntuneError
from lntune.files import REBUILD, RETRAIN, load_safetensors, read_json_object
from lntune.model.parts import is_norm, locate_parts
from lntune.prompt import recorded_prompt
from lntune.serve.errors import ServeError
from lntune.serve.grouped import GroupedModule
from lntune.serve.norm_bank import BankedNorm, find_formula
from lntune.serve.rows import BASE_ROW, RowSelection

NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class ServedModel:
    """The base model or one adapter, as requests name it and /v1/models lists it."""

    name: str
    kind: str
    """"base" or "adapter"."""
    row: int
    method: str | None
    stage: str | None
    path: str
    base_fingerprint: str
    tensors: int
    parameters: int
    size_bytes: int
    template: str
    system: str | None
    image_aspect_ratio: str

    def card(self, created: int) -> dict:
        """The /v1/models entry: OpenAI's fields, then lntune's."""
        return {"id": self.name, "object": "model", "created": created, "owned_by": "lntune", "kind": self.kind,
                "method": self.method, "stage": self.stage, "base_fingerprint": self.base_fingerprint,
                "tensors": self.tensors, "parameters": self.parameters, "size_bytes": self.size_bytes,
                "template": self.template, "image_aspect_ratio": self.image_aspect_ratio}


def _module_path(root: nn.Module, target: nn.Module) -> str:
    for name, module in root.named_modules():
        if module is target:
            return name
    raise RuntimeError(f"{type(target).__name__} is not inside the model")


def _under(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


class AdapterSet:
    def __init__(self, model: nn.Module, model_dir: str | Path, name: str | None = None):
        self.model = model
        self.model_dir = Path(model_dir)
        self.lock = threading.RLock()
        self._registry_lock = threading.Lock()
        self._changes_lock = threading.Lock()
        self._changes_waiting = 0
        self.selection = RowSelection()
        parts = locate_parts(model)
        self._vision_path = _module_path(model, parts.vision_encoder)
        self._connector_path = _module_path(model, parts.connector)
        modules = dict(model.named_modules())
        self._modules = modules  # path -> the model's own module (before any wrapping)
        # Parameter name -> every name it goes by (a tied output head shares the embedding matrix).
        by_identity: dict[int, list[str]] = {}
        for parameter_name, parameter in model.named_parameters(remove_duplicate=False):
            by_identity.setdefault(id(parameter), []).append(parameter_name)
        self._aliases = {n: names for names in by_identity.values() for n in names}
        self._parameters = dict(model.named_parameters(remove_duplicate=False))
        language_path = _module_path(model, parts.language_model)
        self.norms: dict[str, BankedNorm] = {}
        self.unbanked_norms: dict[str, str] = {}
        """path -> class of each norm not banked (a formula lntune does not know): its adapters' rows run grouped."""
        for path, module in modules.items():
            if not (_under(path, language_path) and is_norm(module)):
                continue
            if not isinstance(getattr(module, "weight", None), nn.Parameter):
                continue  # no affine weight: nothing an adapter could change
            try:
                self.norms[path] = BankedNorm(module, find_formula(module, path), self.selection)
            except LntuneError:
                self.unbanked_norms[path] = type(module).__name__
        for path, banked in self.norms.items():
            self._replace(path, banked)
        self.grouped: dict[str, GroupedModule] = {}
        self.base_fingerprint = fingerprint(self.model_dir)
        config = read_json_object(self.model_dir / "config.json", REBUILD)
        template, system = recorded_prompt(config.get("lntune_prompt"))
        aspect_ratio = recorded_aspect_ratio(config.get("image_aspect_ratio"), str(self.model_dir / "config.json"))
        self.base = ServedModel(
            name=name or self.model_dir.resolve().name, kind="base", row=BASE_ROW, method=None, stage=None,
            path=str(self.model_dir.resolve()), base_fingerprint=self.base_fingerprint, tensors=0, parameters=0,
            size_bytes=0, template=template, system=system, image_aspect_ratio=aspect_ratio or EVALUATION_ASPECT_RATIO)
        self.adapters: dict[str, ServedModel] = {}
        self._free_rows: list[int] = []
        self._next_row = BASE_ROW + 1

    # ---- lookup -----------------------------------------------------------------------------------------

    def served(self) -> list[ServedModel]:
        with self._registry_lock:  # not the model lock: listing never waits for a running batch
            return [self.base, *self.adapters.values()]

    def get(self, name: str) -> ServedModel:
        if name == self.base.name:
            return self.base
        served = self.adapters.get(name)
        if served is None:
            valid = ", ".join([self.base.name, *sorted(self.adapters)])
            raise ServeError(f"model {name!r} is not served; valid: {valid} (GET /v1/models lists them)", 404,
                             "model", "model_not_found")
        return served

    # ---- load / unload ----------------------------------------------------------------------------------

    @property
    def changes_waiting(self) -> bool:
        """A load or unload waits for the model lock: the decoder lets no more sequences join its running batch, so
        the batch ends and the change gets its turn."""
        return self._changes_waiting > 0

    @contextlib.contextmanager
    def _changing(self):
        with self._changes_lock:
            self._changes_waiting += 1
        try:
            with self.lock:
                yield
        finally:
            with self._changes_lock:
                self._changes_waiting -= 1

    def load(self, name: str, adapter_dir: str | Path) -> ServedModel:
        """Check the adapter completely (manifest, files, base fingerprint, every tensor's place and shape), then put
        it into a free row. Nothing changes when a check fails."""
        if not NAME_PATTERN.match(name or ""):
            raise ServeError(f"adapter name {name!r} is not valid: 1-64 letters, digits, '.', '_' or '-', starting "
                             "with a letter or digit", 400, "name")
        adapter_dir = Path(adapter_dir)
        try:
            manifest = check_adapter(adapter_dir)
        except ServeError:
            raise
        except Exception as error:  # LntuneError from the file boundary: the folder is not a sound adapter
            raise ServeError(str(error), 400, "path") from None
        if manifest["lora"]:
            raise ServeError(f"adapter {adapter_dir} is a LoRA adapter; lntune serve mixes only adapters of the model's "
                             "own tensors. Merge it (lntune merge --model BASE --adapter DIR --out MERGED) and serve "
                             "the merged model", 400, "path")
        if manifest["base_fingerprint"] != self.base_fingerprint:
            raise ServeError(
                f"adapter {adapter_dir} was trained on another base model (fingerprint {manifest['base_fingerprint']}, "
                f"from {manifest['base_model']}); this server's base {self.model_dir} has fingerprint "
                f"{self.base_fingerprint}. Serve it with the model it was trained from", 409, "path",
                "base_mismatch")
        try:
            aspect_ratio = recorded_aspect_ratio(manifest.get("image_aspect_ratio"), str(adapter_dir / "adapter.json"))
            tensors = load_safetensors(adapter_dir / TRAINABLE_FILE, RETRAIN)
        except Exception as error:
            raise ServeError(str(error), 400, "path") from None
        placements = self._placements(tensors, adapter_dir)
        template, system = recorded_prompt(manifest.get("prompt"))
        method = manifest.get("method")
        with self._changing():
            if name == self.base.name or name in self.adapters:
                raise ServeError(f"a model named {name!r} is already served; unload it first or choose another name",
                                 409, "name", "name_taken")
            row = self._free_rows.pop() if self._free_rows else self._next_row
            if row == self._next_row:
                self._next_row += 1
            self._install(row, placements)
            served = ServedModel(
                name=name, kind="adapter", row=row,
                method=method.get("name") if isinstance(method, dict) else method, stage=manifest.get("stage"),
                path=str(adapter_dir.resolve()), base_fingerprint=manifest["base_fingerprint"], tensors=len(tensors),
                parameters=sum(t.numel() for t in tensors.values()),
                size_bytes=sum(t.numel() * t.element_size() for t in tensors.values()),
                template=template, system=system, image_aspect_ratio=aspect_ratio or self.base.image_aspect_ratio)
            with self._registry_lock:
                self.adapters[name] = served
            return served

    def unload(self, name: str) -> ServedModel:
        with self._changing():
            if name == self.base.name:
                raise ServeError(f"{name!r} is the base model; only adapters can be unloaded", 400, "name")
            served = self.get(name)
            for banked in self.norms.values():
                banked.set_row(served.row, None, None)
            for grouped in self.grouped.values():
                grouped.overrides.pop(served.row, None)
            with self._registry_lock:
                del self.adapters[name]
            self._free_rows.append(served.row)
            return served

    def _placements(self, tensors: dict[str, torch.Tensor], adapter_dir: Path) -> list[tuple[str, str, str, torch.Tensor]]:
        """(kind, module path, parameter name in the module, tensor) for every adapter tensor and its aliases."""
        placements = []
        for tensor_name, tensor in tensors.items():
            if tensor_name not in self._aliases:
                raise ServeError(f"adapter {adapter_dir}: tensor {tensor_name} is not a parameter of the base model "
                                 f"{self.model_dir}; {RETRAIN}", 400, "path")
            parameter = self._parameters[tensor_name]
            if tuple(tensor.shape) != tuple(parameter.shape):
                raise ServeError(f"adapter {adapter_dir}: tensor {tensor_name} {list(tensor.shape)} does not fit the "
                                 f"model's {list(parameter.shape)}; {RETRAIN}", 400, "path")
            value = tensor.to(device=parameter.device, dtype=parameter.dtype)
            for alias in self._aliases[tensor_name]:
                path, _, attribute = alias.rpartition(".")
                if _under(path, self._vision_path):
                    raise ServeError(f"adapter {adapter_dir} changes the vision encoder ({alias}); lntune serve keeps "
                                     "the vision encoder shared. Merge it and serve the merged model", 400, "path")
                kind = "norm" if path in self.norms else ("image" if _under(path, self._connector_path) else "sequence")
                placements.append((kind, path, attribute, value))
        return placements

    def _install(self, row: int, placements) -> None:
        norm_rows: dict[str, dict[str, torch.Tensor]] = {}
        for kind, path, attribute, value in placements:
            if kind == "norm":
                norm_rows.setdefault(path, {})[attribute] = value
                continue
            grouped = self.grouped.get(path)
            if grouped is None:
                grouped = self.grouped[path] = GroupedModule(self._modules[path], kind, self.selection)
                self._replace(path, grouped)
            grouped.overrides.setdefault(row, {})[attribute] = value
        for path, banked in self.norms.items():
            given = norm_rows.get(path, {})
            banked.set_row(row, given.get("weight"), given.get("bias"))

    def _replace(self, path: str, wrapper: nn.Module) -> None:
        parent_path, _, child = path.rpartition(".")
        parent = self._modules[parent_path] if parent_path else self.model
        setattr(parent, child, wrapper)

    # ---- the rows of a batch ----------------------------------------------------------------------------

    def rows(self, names: list[str], images_per_sequence: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Bank rows of a batch's sequences [B] and of its images [N], for selection.use(...)."""
        with self.lock:
            sequence_rows = [self.get(name).row for name in names]
        device = next(self.model.parameters()).device
        image_rows = [row for row, count in zip(sequence_rows, images_per_sequence) for _ in range(count)]
        return (torch.tensor(sequence_rows, dtype=torch.long, device=device),
                torch.tensor(image_rows, dtype=torch.long, device=device))


def load_adapter_set(model_dir: str | Path, adapters: dict[str, str | Path] | None = None, dtype: str = "auto",
                     device: str | None = None) -> AdapterSet:
    """The base model of `model_dir` (on `device`, default cuda if present) with every adapter of `adapters`
    (name -> folder) in its banks: what `lntune serve` serves, and what `lntune eval` / `lntune chat` with several
    `--adapter NAME=DIR` decode together. An adapter that cannot be loaded is one LntuneError naming it."""
    from lntune.model.load import check_model_dir, load_model

    check_model_dir(Path(model_dir))  # before the weights: a wrong folder fails in a second
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    adapter_set = AdapterSet(load_model(model_dir, dtype=dtype).to(device).eval(), model_dir)
    for name, folder in (adapters or {}).items():
        try:
            adapter_set.load(name, folder)
        except ServeError as error:
            raise LntuneError(f"adapter {name} ({folder}): {error}") from None
    return adapter_set
