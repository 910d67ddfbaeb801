"""The learning-rate choice of a compare run: the lowest validation loss, and whether it lies at the edge of the
rates searched (where a better rate may lie beyond, so the search goes one grid step further when `lr_extend`
allows it).

Pure functions of the (rate, validation loss) points, so the rule is tested without training anything.
"""

from __future__ import annotations

import math


def grid_rate(rate: float) -> float:
    """A rate of a grid made here (the default grid, a step past an edge): 3 significant digits, so the folder names
    and the report read 0.0027, not 0.0027000000000000001."""
    return float(f"{rate:.3g}")


def chosen_rate(search: list[tuple[float, float]]) -> float | None:
    """The rate of the lowest finite validation loss (on a tie the first searched); None when every point diverged."""
    finite = [(loss, index) for index, (_, loss) in enumerate(search) if math.isfinite(loss)]
    return search[min(finite)[1]][0] if finite else None


def rate_beyond(search: list[tuple[float, float]], rate: float) -> float | None:
    """The next rate past `rate` when it is the highest or lowest rate searched, one grid step further (the ratio
    of that edge's two outermost rates, x3 on the default grid); None when `rate` lies inside the rates searched
    (a diverged point counts: nothing is searched past a rate that diverged) or fewer than two rates were."""
    rates = sorted(point for point, _ in search)
    if len(rates) < 2:
        return None
    if rate == rates[-1]:
        return grid_rate(rate * rates[-1] / rates[-2])
    if rate == rates[0]:
        return grid_rate(rate * rates[0] / rates[1])
    return None
