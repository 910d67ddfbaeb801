"""BENCHMARKS: name -> Benchmark (base.py): loading of the official files, prompting, scoring, grouping."""

from lntune.eval.benchmarks.base import Benchmark
from lntune.eval.benchmarks.captions import CocoCaptions, Flickr30kCaptions
from lntune.eval.benchmarks.mme import MME
from lntune.eval.benchmarks.pope import POPE
from lntune.eval.benchmarks.vqav2 import VQAv2

BENCHMARKS: dict[str, type[Benchmark]] = {
    benchmark.name: benchmark for benchmark in (MME, VQAv2, CocoCaptions, Flickr30kCaptions, POPE)
}


def get_benchmark(name: str, **options) -> Benchmark:
    """The benchmark called `name`; options: see Benchmark.__init__ (annotations)."""
    from lntune.errors import unknown_key_error

    if name not in BENCHMARKS:
        raise unknown_key_error("benchmark", name, BENCHMARKS)
    return BENCHMARKS[name](**options)
