"""Every benchmark is one Benchmark: everything the runner and `lntune score` use is declared and implemented."""

import inspect

import pytest

from lntune.errors import LntuneError
from lntune.eval import score
from lntune.eval.benchmarks import BENCHMARKS, get_benchmark
from lntune.eval.benchmarks.base import Benchmark, EvalItem


@pytest.mark.parametrize("name", list(BENCHMARKS))
def test_every_benchmark_implements_the_protocol(name):
    benchmark = get_benchmark(name)  # an abstract method left out could not be instantiated
    assert isinstance(benchmark, Benchmark) and benchmark.name == name
    assert benchmark.default_mode in benchmark.modes and benchmark.max_new_tokens > 0
    assert ("{question}" in benchmark.default_prompt) == benchmark.asks_questions
    parameters = inspect.signature(benchmark.score_files).parameters
    assert set(benchmark.scoring_files) == {key for key, p in parameters.items() if p.kind is p.KEYWORD_ONLY}


def test_defaults_group_each_item_alone_and_write_no_official_results():
    item = EvalItem(id="existence/1.jpg/0", image=None, prompt="", reference={"subtask": "existence", "image": "1.jpg"})
    assert get_benchmark("pope").group_of(item) == item.id
    assert get_benchmark("mme").group_of(item) == "existence/1.jpg"
    assert get_benchmark("pope").official_results([item], {item.id: "yes"}) is None
    assert get_benchmark("coco").official_results([EvalItem("42", None, "")], {"42": "a cat"}) == \
        [{"image_id": 42, "caption": "a cat"}]


def test_unknown_mode_names_the_benchmark_and_the_valid_modes():
    with pytest.raises(LntuneError, match="unknown pope mode 'strict'; valid: lmms-eval, official"):
        get_benchmark("pope").check_mode("strict")


def test_scoring_files_says_which_options_are_missing(tmp_path):
    with pytest.raises(LntuneError, match="--labels --answers .*missing: --answers"):
        score.from_files("pope", "official", labels=tmp_path / "labels.json", answers=None)
