"""Decoder: a batch of sequences -> tokens, one forward pass per step for all of them, with a KV cache.

The prompts are left-padded (generation continues from the right end of every row) with position ids counted from
the attention mask, as transformers' generate does, so a sequence decodes as it would alone. The prefill runs the
images through the vision tower once; each later step feeds one token per sequence and reuses the cache. A sequence
that ends (end-of-sequence token, stop string, max_tokens, client gone) leaves the batch at once: its rows are
dropped from the cache, the mask and the adapter rows, so the others carry on without it. Sequences that arrive meanwhile can join at the next step (`more`, from the
batcher): they are prefilled on their own and their cache appended to the batch's (lntune.serve.joining).

Every sequence names the model it asks (the base or an adapter); the adapter rows of the batch are set for each
forward pass (lntune.serve.rows), so sequences of different adapters share every forward pass.

Written here rather than calling `model.generate`: each sequence has its own sampling settings, stop strings, token
budget, adapter and stream, and leaves the batch on its own, none of which one generate call can express.
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from lntune.serve.adapters import AdapterSet
from lntune.serve.errors import ServeError
from lntune.serve.joining import join, joinable
from lntune.serve.sampling import SamplingParams, make_generator, next_token
from lntune.serve.text import TextAssembler


class Sink:
    """Where a sequence's output goes (the HTTP layer bridges it to its event loop). Called on the decoder thread."""

    def on_text(self, piece: str) -> None: ...

    def on_finish(self, reason: str, prompt_tokens: int, completion_tokens: int, text: str) -> None: ...

    def on_error(self, error: ServeError) -> None: ...


@dataclass
class Sequence:
    """One request: its prompt (ids from the PromptBuilder, image tokens expanded), images and decoding settings."""

    prompt_ids: list[int]
    pixel_values: torch.Tensor | None
    """[images, 3, H, W], in the order of the prompt's image tokens; None without images."""
    model_name: str
    max_new_tokens: int
    sampling: SamplingParams = field(default_factory=SamplingParams)
    stop: tuple[str, ...] = ()
    sink: Sink = field(default_factory=Sink)
    cancelled: threading.Event = field(default_factory=threading.Event)
    arrived: float = field(default_factory=time.monotonic)
    generated: list[int] = field(default_factory=list)
    """The token ids generated (the end-of-sequence token not included), complete once the sink has its finish."""

    @property
    def images(self) -> int:
        return 0 if self.pixel_values is None else self.pixel_values.shape[0]


@dataclass
class _Running:
    sequence: Sequence
    assembler: TextAssembler
    generator: torch.Generator | None
    tokens: int = 0
    finish_reason: str | None = None


@dataclass
class BatchStats:
    sequences: int = 0
    tokens: int = 0
    steps: int = 0
    seconds: float = 0.0


class Decoder:
    def __init__(self, model, tokenizer, adapters: AdapterSet):
        self.model = model
        self.tokenizer = tokenizer
        self.adapters = adapters
        eos = getattr(model.generation_config, "eos_token_id", None)
        eos = eos if isinstance(eos, (list, tuple)) else [eos]
        self.eos_ids = {token for token in [*eos, tokenizer.eos_token_id] if token is not None}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        # transformers renamed `past_key_values` to `cache` (the old name still works, with a warning, until 5.40).
        self.cache_argument = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        self.device = next(model.parameters()).device

    def run(self, sequences: list[Sequence], more=None) -> BatchStats:
        """Decode a batch to the end. `more(active)`, when given, is asked between steps for waiting sequences to join
        the batch (at most what fits beside `active` running ones); they are prefilled and decoded on with the others
        (lntune.serve.joining). A sequence whose model was unloaded meanwhile fails alone; a failure of the forward
        pass fails the sequences of this batch (500), never the server."""
        stats = BatchStats()
        with self.adapters.lock:
            running = self._admit(sequences)
            if not running:
                return stats
            started = time.perf_counter()
            try:
                with torch.inference_mode():
                    self._decode(running, stats, more)
            except Exception as error:  # noqa: BLE001 - a failing batch must not take the decoder thread down
                for state in running:
                    if state.finish_reason is None:
                        state.finish_reason = "error"
                        state.sequence.sink.on_error(ServeError(
                            f"generation failed: {type(error).__name__}: {error}", 500, code="generation_failed"))
            stats.sequences = len(running)
            stats.seconds = time.perf_counter() - started
        return stats

    def _admit(self, sequences: list[Sequence]) -> list[_Running]:
        """Running states of the sequences whose model is (still) served; the others fail alone (404)."""
        admitted = []
        for sequence in sequences:
            try:
                self.adapters.get(sequence.model_name)
            except ServeError as error:
                sequence.sink.on_error(error)
                continue
            admitted.append(_Running(sequence, TextAssembler(self.tokenizer, sequence.stop),
                                     make_generator(sequence.sampling)))
        return admitted

    def _forward(self, sequence_rows, image_rows, **inputs):
        with self.adapters.selection.use(sequence_rows, image_rows):
            output = self.model(**inputs, use_cache=True, logits_to_keep=1)
        return output.logits[:, -1, :].float()  # [B, V]

    def _prefill(self, states: list[_Running]):
        """One forward pass over the left-padded prompts (images through the vision tower once): (logits [B, V],
        cache, attention mask [B, T], positions [B] of the last prompt token, sequence rows [B])."""
        sequences = [state.sequence for state in states]
        length = max(len(s.prompt_ids) for s in sequences)
        batch = len(sequences)
        input_ids = torch.full((batch, length), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((batch, length), dtype=torch.long)
        for row, sequence in enumerate(sequences):
            input_ids[row, length - len(sequence.prompt_ids):] = torch.tensor(sequence.prompt_ids)
            attention_mask[row, length - len(sequence.prompt_ids):] = 1
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)  # left padding: each row counts from 0
        inputs = {"input_ids": input_ids.to(self.device), "attention_mask": attention_mask.to(self.device),
                  "position_ids": position_ids.to(self.device)}
        pictures = [s.pixel_values for s in sequences if s.pixel_values is not None]
        if pictures:
            inputs["pixel_values"] = torch.cat(pictures).to(self.device, self.model.dtype)
        sequence_rows, image_rows = self.adapters.rows([s.model_name for s in sequences], [s.images for s in sequences])
        cache = DynamicCache(config=self.model.config.get_text_config(decoder=True))
        logits = self._forward(sequence_rows, image_rows, **inputs, **{self.cache_argument: cache})
        return logits, cache, inputs["attention_mask"], inputs["position_ids"][:, -1], sequence_rows

    def _choose(self, states: list[_Running], logits: torch.Tensor, stats: BatchStats) -> list[int]:
        """Each row's next token (greedy or sampled), handed to its sequence; returns the tokens in row order."""
        chosen = []
        greedy = logits.argmax(-1).tolist()  # one device sync for every greedy row of the step
        sampled = None
        for row, state in enumerate(states):
            if state.sequence.sampling.greedy:
                token = greedy[row]
            else:
                sampled = logits.cpu() if sampled is None else sampled
                token = next_token(sampled[row], state.sequence.sampling, state.generator)
            chosen.append(token)
            self._take(state, token)
            stats.tokens += token not in self.eos_ids
        return chosen

    def _decode(self, running: list[_Running], stats: BatchStats, more=None) -> None:
        """Decode `running` to the end; sequences that join are appended to `running` (so a failure reaches them)."""
        logits, cache, attention_mask, positions, sequence_rows = self._prefill(running)
        active = list(running)
        can_join = more is not None and joinable(cache)
        while True:
            stats.steps += 1
            chosen = self._choose(active, logits, stats)
            keep = [row for row, state in enumerate(active) if state.finish_reason is None]
            if not keep:
                return  # the batch is over; whatever waits starts the next one
            if len(keep) < len(active):
                index = torch.tensor(keep, device=self.device)
                cache.batch_select_indices(index)
                attention_mask, positions, sequence_rows = attention_mask[index], positions[index], sequence_rows[index]
            next_tokens = [chosen[row] for row in keep]
            active = [active[row] for row in keep]
            joining = self._admit(more(len(active))) if can_join and not self.adapters.changes_waiting else []
            if joining:
                running.extend(joining)
                new_logits, new_cache, new_mask, new_positions, new_rows = self._prefill(joining)
                new_chosen = self._choose(joining, new_logits, stats)
                new_keep = [row for row, state in enumerate(joining) if state.finish_reason is None]
                if new_keep:
                    index = torch.tensor(new_keep, device=self.device)
                    new_cache.batch_select_indices(index)
                    attention_mask = join(cache, attention_mask, new_cache, new_mask[index])
                    positions = torch.cat([positions, new_positions[index]])
                    sequence_rows = torch.cat([sequence_rows, new_rows[index]])
                    next_tokens += [new_chosen[row] for row in new_keep]
                    active += [joining[row] for row in new_keep]
            next_ids = torch.tensor([[token] for token in next_tokens], device=self.device)  # [b, 1]
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=1)
            positions = positions + 1
            logits = self._forward(sequence_rows, None, input_ids=next_ids, attention_mask=attention_mask,
                                   position_ids=positions[:, None], **{self.cache_argument: cache})

    def _take(self, state: _Running, token: int) -> None:
        """One chosen token of a sequence: text out, and whether the sequence has ended."""
        sequence = state.sequence
        if token in self.eos_ids:
            state.finish_reason = "stop"
        else:
            state.tokens += 1
            piece = state.assembler.add(token)
            if piece:
                sequence.sink.on_text(piece)
            if state.assembler.stopped:
                state.finish_reason = "stop"
            elif state.tokens >= sequence.max_new_tokens:
                state.finish_reason = "length"
            elif sequence.cancelled.is_set():
                state.finish_reason = "cancelled"
        if state.finish_reason is not None:
            sequence.generated = list(state.assembler.token_ids)
            rest = state.assembler.finish()
            if rest:
                sequence.sink.on_text(rest)
            sequence.sink.on_finish(state.finish_reason, len(sequence.prompt_ids), state.tokens, state.assembler.text)
