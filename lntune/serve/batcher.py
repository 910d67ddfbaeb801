"""Batcher: dynamic batching. Requests that arrive together are decoded together.

One decoder thread takes the oldest waiting request, waits up to `batch_wait_ms` after its arrival for others (or
until `max_batch` are waiting), and decodes them as one batch to the end. Requests arriving meanwhile join the
running batch at its next step while it has room (`join`: continuous batching; lntune.serve.joining), else they
form the next batch. The queue is bounded (`max_queue`; one more is answered 503). Stopping lets the thread finish the running
batch and everything already queued (graceful shutdown), while new requests are refused (503).
"""

from __future__ import annotations

import collections
import threading
import time

from lntune.serve.decoding import BatchStats, Decoder, Sequence
from lntune.serve.errors import ServeError


KEPT_BATCHES = 64
"""How many recent batches' stats the batcher keeps (what a test or an operator reads of its recent work)."""


class Batcher:
    def __init__(self, decoder: Decoder, max_batch: int, batch_wait_ms: float, max_queue: int, say=print,
                 join: bool = True):
        self.decoder = decoder
        self.join = join
        self.max_batch = max_batch
        self.wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self.say = say
        self._queue: collections.deque[Sequence] = collections.deque()
        self._condition = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.batches: list[BatchStats] = []
        """Recent batches (sequences, tokens, steps, seconds), newest last; the last KEPT_BATCHES only."""
        self.batches_done = 0
        """Batches decoded since the start: counts on where `batches`, kept short, stops growing."""

    def batches_since(self, done: int) -> list[BatchStats]:
        """The batches decoded after `batches_done` read `done` (the last KEPT_BATCHES of them at most)."""
        with self._condition:
            batches, count = self.batches, self.batches_done
        return batches[max(0, len(batches) - (count - done)):] if count > done else []

    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="lntune-serve-decoder", daemon=True)
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def waiting(self) -> int:
        with self._condition:
            return len(self._queue)

    def submit(self, sequence: Sequence) -> None:
        with self._condition:
            if self._stopping:
                raise ServeError("the server is shutting down; send the request again later", 503,
                                 code="shutting_down")
            if len(self._queue) >= self.max_queue:
                raise ServeError(f"the server is busy ({len(self._queue)} requests waiting, --max-queue "
                                 f"{self.max_queue}); retry shortly", 503, code="server_busy")
            self._queue.append(sequence)
            self._condition.notify_all()

    def stop(self, timeout: float | None = None) -> None:
        """Refuse new requests, finish the running batch and the queued ones, then end the thread."""
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _next_batch(self) -> list[Sequence] | None:
        with self._condition:
            while not self._queue and not self._stopping:
                self._condition.wait()
            if not self._queue:
                return None  # stopping, nothing left
            deadline = self._queue[0].arrived + self.wait
            while len(self._queue) < self.max_batch and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            count = min(self.max_batch, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def _joining(self, active: int) -> list[Sequence]:
        """Waiting requests that fit beside `active` running sequences (none when the batch is full), oldest first;
        the decoder asks between steps."""
        taken, cancelled = [], []
        with self._condition:
            while self._queue and len(taken) < self.max_batch - active:
                sequence = self._queue.popleft()
                (cancelled if sequence.cancelled.is_set() else taken).append(sequence)
        for sequence in cancelled:
            sequence.sink.on_finish("cancelled", len(sequence.prompt_ids), 0, "")
        return taken

    def _loop(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            live = [sequence for sequence in batch if not sequence.cancelled.is_set()]
            for sequence in batch:
                if sequence.cancelled.is_set():
                    sequence.sink.on_finish("cancelled", len(sequence.prompt_ids), 0, "")
            if not live:
                continue
            try:
                stats = self.decoder.run(live, self._joining if self.join else None)
            except Exception as error:  # noqa: BLE001 - Decoder.run fails its sequences itself; this is a last guard
                self.say(f"lntune serve: a batch failed: {type(error).__name__}: {error}")
                for sequence in live:
                    sequence.sink.on_error(ServeError(f"generation failed: {error}", 500, code="generation_failed"))
                continue
            self._record(stats)

    def _record(self, stats: BatchStats) -> None:
        with self._condition:  # the list and the count change together (batches_since reads both)
            self.batches = (self.batches + [stats])[-KEPT_BATCHES:]
            self.batches_done += 1
