"""BENCHMARKS: name -> a loader of the official files + the official scoring of the answers."""

from lntune.eval.benchmarks.captions import Captions
from lntune.eval.benchmarks.mme import MME
from lntune.eval.benchmarks.pope import POPE
from lntune.eval.benchmarks.vqav2 import VQAv2

BENCHMARKS = {
    "mme": MME,
    "vqav2": VQAv2,
    "coco": lambda: Captions("coco"),
    "flickr30k": lambda: Captions("flickr30k"),
    "pope": POPE,
}


def get_benchmark(name: str, **options):
    from lntune.errors import unknown_key_error

    if name not in BENCHMARKS:
        raise unknown_key_error("benchmark", name, BENCHMARKS)
    return BENCHMARKS[name](**options)
