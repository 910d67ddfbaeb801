"""`lntune analyze similarity | gradients | drift`: runs and models in, JSON + PNG out."""

from __future__ import annotations

from pathlib import Path

from lntune.cli.command import Command


def _analyze_arguments(parser):
    parser.add_argument("action", choices=["similarity", "gradients", "drift"])
    parser.add_argument("runs", nargs="*", help="gradients / drift: run directories")
    parser.add_argument("--run", action="append", help="similarity: a run directory (its model + adapter; repeatable)")
    parser.add_argument("--model", action="append", help="similarity: a model directory (repeatable)")
    parser.add_argument("--data", help="similarity: LLaVA-format samples, [TYPE=]PATH")
    parser.add_argument("--image-folder")
    parser.add_argument("--n", type=int, default=200, help="similarity: samples (a seeded draw)")
    parser.add_argument("--tokens", default="all", choices=["all", "image", "text"], help="similarity: tokens to pool")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--window", type=int, default=50, help="gradients: sliding-window length in steps")
    parser.add_argument("--out", default="analysis", help="output directory (JSON + PNG)")


def _analyze_run(args) -> int:
    from lntune.analysis.commands import drift_of, gradients_of, similarity_of
    from lntune.errors import LntuneError

    out = Path(args.out)
    if args.action == "similarity":
        if not args.data:
            raise LntuneError("similarity needs --data (the samples to run through the models)")
        summary = similarity_of(args.run or [], args.model or [], args.data, args.image_folder, out, n=args.n,
                                tokens=args.tokens, batch_size=args.batch_size, max_length=args.max_length,
                                seed=args.seed)
    elif not args.runs:
        raise LntuneError(f"{args.action} needs run directories")
    elif args.action == "gradients":
        summary = gradients_of(args.runs, out, args.window)
    else:
        summary = drift_of(args.runs, out)
    for name, value in summary.items():
        print(f"{name:<30} {value if not isinstance(value, float) else f'{value:.6g}'}"
              if not isinstance(value, dict) else f"{name}: written")
    print(f"written to {args.out}/")
    return 0


ANALYZE = Command(_analyze_arguments, _analyze_run, "layer similarity, gradient variance, norm drift (JSON + plots)")
