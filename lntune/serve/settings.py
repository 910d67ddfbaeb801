"""ServeSettings: every limit and knob of `lntune serve`, validated once, then frozen."""

from __future__ import annotations

from dataclasses import dataclass

from lntune.data.images import DEFAULT_MAX_PIXELS
from lntune.errors import LntuneError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    """Where to listen. Loopback by default: anything else exposes the model to the network."""
    port: int = 8000
    api_key: str | None = None
    """When set, every /v1 request needs `Authorization: Bearer <api_key>`."""
    max_batch: int = 16
    """Sequences decoded together at most (one forward pass per step for all of them)."""
    batch_wait_ms: float = 5.0
    """How long the first request of a batch waits for others to arrive."""
    join_running: bool = True
    """Requests arriving while a batch decodes join it at its next step (continuous batching) while it has room;
    False: they wait for the batch to end and form the next one."""
    max_queue: int = 256
    """Requests waiting for a batch at most; one more is answered 503 (busy) rather than queued without bound."""
    max_tokens_limit: int = 1024
    """The largest `max_tokens` a request may ask for."""
    default_max_tokens: int | None = None
    """`max_tokens` of a request that gives none; None: 256, or `max_tokens_limit` when that is lower."""
    max_prompt_tokens: int | None = None
    """The longest prompt (image tokens included); None: the model's context length minus `max_tokens`."""
    max_images: int = 1
    """Images per request (LLaVA-1.5 models are trained with one image per conversation)."""
    max_image_bytes: int = 16 * 1024 * 1024
    """Decoded bytes of one image."""
    max_image_pixels: int = DEFAULT_MAX_PIXELS
    """Pixels of one image, checked from its header before it is decoded (the training loader's guard)."""
    max_body_bytes: int = 32 * 1024 * 1024
    """A request body larger than this is refused (413) before it is parsed."""

    def __post_init__(self):
        positive = {"max_batch": self.max_batch, "max_queue": self.max_queue, "max_tokens_limit": self.max_tokens_limit,
                    "max_images": self.max_images,
                    "max_image_bytes": self.max_image_bytes, "max_image_pixels": self.max_image_pixels,
                    "max_body_bytes": self.max_body_bytes}
        for name in ("max_prompt_tokens", "default_max_tokens"):
            if getattr(self, name) is not None:
                positive[name] = getattr(self, name)
        for name, value in positive.items():
            if value < 1:
                raise LntuneError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.batch_wait_ms < 0:
            raise LntuneError(f"--batch-wait-ms must be >= 0, got {self.batch_wait_ms}")
        if not 0 <= self.port <= 65535:
            raise LntuneError(f"--port must be in 0..65535, got {self.port}")
        if self.default_max_tokens is not None and self.default_max_tokens > self.max_tokens_limit:
            raise LntuneError(f"--default-max-tokens {self.default_max_tokens} is over --max-tokens-limit "
                              f"{self.max_tokens_limit}")
        if self.api_key is not None and not self.api_key.strip():
            raise LntuneError("--api-key is empty; give a key or leave the option out")

    @property
    def max_tokens_default(self) -> int:
        return self.default_max_tokens if self.default_max_tokens is not None else min(256, self.max_tokens_limit)

    @property
    def exposed(self) -> bool:
        """Listening beyond this machine."""
        return self.host not in LOCAL_HOSTS
