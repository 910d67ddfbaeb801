"""--limit's subset: the same items as before the linear rewrite, and linear in the number of items."""

import random

import pytest

from lntune.eval.benchmarks import get_benchmark
from lntune.eval.benchmarks.base import EvalItem
from lntune.eval.runner import select_subset


def quadratic_select_subset(items, limit, group_of=None):
    """select_subset as it was (it rescanned every item per chosen group): the reference for the subset."""
    if not limit or limit >= len(items):
        return items
    group_of = group_of or (lambda item: item.id)
    groups = list(dict.fromkeys(group_of(item) for item in items))
    chosen, count = set(), 0
    for group in random.Random(0).sample(groups, len(groups)):
        if count >= limit:
            break
        chosen.add(group)
        count += sum(1 for item in items if group_of(item) == group)
    return [item for item in items if group_of(item) in chosen]


def grouped_items(count: int, seed: int) -> list[EvalItem]:
    """Items in groups of 1 to 3, a group's items not always next to each other (as in LLaVA's question files)."""
    rng = random.Random(seed)
    groups = [f"g{rng.randrange(count // 2 + 1)}" for _ in range(count)]
    return [EvalItem(id=f"q{index}", image=None, prompt="", reference={"group": group})
            for index, group in enumerate(groups)]


def by_group(item: EvalItem) -> str:
    return item.reference["group"]


@pytest.mark.parametrize("count,limit,seed", [(10, 3, 0), (57, 20, 1), (200, 199, 2), (200, 1, 3), (31, 31, 4),
                                              (31, 40, 5), (31, None, 6)])
def test_same_subset_as_before(count, limit, seed):
    items = grouped_items(count, seed)
    for group_of in (None, by_group):
        subset = select_subset(items, limit, group_of)
        assert [item.id for item in subset] == [item.id for item in quadratic_select_subset(items, limit, group_of)]
        if limit and limit < count:
            assert limit <= len(subset) <= count


def test_mme_subset_keeps_image_pairs_as_before(tmp_path):
    from tests.eval.fixtures import write_mme

    mme = get_benchmark("mme")
    items = mme.load(write_mme(tmp_path, flat_subtasks=("existence", "count", "color", "scene")), None, None)
    for limit in (1, 5, 9):
        subset = select_subset(items, limit, mme.group_of)
        assert subset == quadratic_select_subset(items, limit, mme.group_of)
        assert all(sum(mme.group_of(other) == mme.group_of(item) for other in subset) == 2 for item in subset)


def test_linear_in_the_number_of_items():
    """50k items, --limit 40k: each item's group is computed once (the old code did it once per chosen group)."""
    items = [EvalItem(id=str(index), image=None, prompt="") for index in range(50_000)]
    calls = 0

    def counting_group_of(item):
        nonlocal calls
        calls += 1
        return item.id

    subset = select_subset(items, 40_000, counting_group_of)
    assert len(subset) == 40_000 and calls == len(items)
