"""`lntune serve`: arguments and the command (registered in lntune/cli/serve.py)."""

from __future__ import annotations

import os
import sys

from lntune.data.images import DEFAULT_MAX_PIXELS


def add_arguments(parser) -> None:
    parser.add_argument("--model", required=True, help="the base model directory (a built or merged MLLM)")
    parser.add_argument("--adapter", action="append", default=[], metavar="NAME=DIR",
                        help="serve an adapter under NAME (repeatable; a run folder with adapter/ inside is fine)")
    parser.add_argument("--adapters-dir", metavar="DIR",
                        help="serve every adapter folder inside DIR by its folder name; POST /v1/adapters loads more "
                             "from inside DIR at run time (off without it)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--api-key", default=os.environ.get("LNTUNE_API_KEY"),
                        help="require `Authorization: Bearer KEY` on /v1 (default: $LNTUNE_API_KEY, else none)")
    parser.add_argument("--dtype", default="auto", help="auto (as stored), float32, bfloat16, float16")
    parser.add_argument("--device", help="cuda, cpu, cuda:1, ... (default: cuda if there is one)")
    parser.add_argument("--max-batch", type=int, default=16, help="sequences decoded together at most (default 16)")
    parser.add_argument("--batch-wait-ms", type=float, default=5.0,
                        help="how long a request waits for others to batch with (default 5)")
    parser.add_argument("--no-join", dest="join_running", action="store_false",
                        help="requests arriving while a batch decodes wait for it to end (default: they join it at "
                             "its next step while it has room)")
    parser.add_argument("--max-queue", type=int, default=256, help="waiting requests at most; more get 503 (default 256)")
    parser.add_argument("--max-tokens-limit", type=int, default=1024, help="largest max_tokens a request may ask (1024)")
    parser.add_argument("--default-max-tokens", type=int,
                        help="max_tokens when a request gives none (default 256, or --max-tokens-limit if lower)")
    parser.add_argument("--max-prompt-tokens", type=int, help="longest prompt, image tokens included (default: the "
                        "model's context length minus max_tokens)")
    parser.add_argument("--max-images", type=int, default=1, help="images per request (default 1, as LLaVA-1.5 trains)")
    parser.add_argument("--max-image-bytes", type=int, default=16 * 1024 * 1024, help="bytes of one image (16 MiB)")
    parser.add_argument("--max-image-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                        help=f"pixels of one image, checked before decoding (default {DEFAULT_MAX_PIXELS:,})")
    parser.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024, help="request body size (32 MiB)")


def _require_server_packages() -> None:
    from lntune.errors import LntuneError

    missing = []
    for package in ("fastapi", "uvicorn"):
        try:
            __import__(package)
        except ImportError:
            missing.append(package)
    if missing:
        raise LntuneError(f"lntune serve needs {' and '.join(missing)}: pip install 'lntune[serve]'")


def run(args) -> int:
    _require_server_packages()
    from lntune.cli.command import named_adapters
    from lntune.serve.server import serve_forever
    from lntune.serve.service import ChatService, adapter_folder
    from lntune.serve.settings import ServeSettings
    from pathlib import Path

    say = lambda message: print(message, file=sys.stderr)  # noqa: E731
    settings = ServeSettings(
        host=args.host, port=args.port, api_key=args.api_key, max_batch=args.max_batch,
        batch_wait_ms=args.batch_wait_ms, join_running=args.join_running, max_queue=args.max_queue, max_tokens_limit=args.max_tokens_limit,
        default_max_tokens=args.default_max_tokens, max_prompt_tokens=args.max_prompt_tokens,
        max_images=args.max_images, max_image_bytes=args.max_image_bytes, max_image_pixels=args.max_image_pixels,
        max_body_bytes=args.max_body_bytes)
    adapters = {name: adapter_folder(Path(folder)) or Path(folder) for name, folder in named_adapters(args.adapter).items()}
    if settings.exposed and settings.api_key is None:
        say(f"lntune serve: warning: listening on {settings.host} with no --api-key: anyone who can reach this "
            "machine can use the model")
    service = ChatService(args.model, settings, adapters, args.adapters_dir, args.dtype, args.device, say=say)
    serve_forever(service, say=say)
    return 0
