"""The paired bootstrap: is run A's benchmark number different from the baseline's, beyond seed and item noise?

Both runs were trained with the same seeds and evaluated on the same items. One resample draws, with replacement,
as many seeds as there are (the same seed draw for both runs: seed k of A is paired with seed k of the baseline,
which shared its data order) and as many units as there are (the same items for every seed and both runs), and
computes

    difference = mean over the drawn seeds of A's number on the drawn units
               - mean over the drawn seeds of the baseline's number on the drawn units.

The reported difference is that statistic on all seeds and units; the 95% interval is the 2.5th and 97.5th
percentiles of the resampled differences (the percentile bootstrap). An interval that holds 0 is within noise.

The random draw is numpy's default_rng(seed); each resample takes integers(0, S, S) for the seeds, then
integers(0, N, N) for the units, so a seed gives the same intervals everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lntune.errors import LntuneError
from lntune.study.items import ItemTable


@dataclass(frozen=True)
class Comparison:
    difference: float
    low: float
    high: float

    @property
    def within_noise(self) -> bool:
        return self.low <= 0 <= self.high


def paired_bootstrap(runs: list[ItemTable], baseline: list[ItemTable], resamples: int = 1000,
                     seed: int = 0) -> Comparison:
    """runs, baseline: one ItemTable per training seed, in the same seed order, on one benchmark."""
    if len(runs) != len(baseline) or not runs:
        raise LntuneError(f"the paired bootstrap needs the same seeds for both runs, got {len(runs)} and "
                          f"{len(baseline)} evaluations")
    units = runs[0].units
    for table in runs + baseline:
        if table.units != units:
            raise LntuneError("the paired bootstrap needs every evaluation on the same items; these differ (was one "
                              "evaluated with another eval_limit?)")
    seeds, count = len(runs), len(units)

    def difference(seed_rows, unit_rows):
        a = np.mean([runs[s].aggregate(runs[s].values[unit_rows]) for s in seed_rows])
        b = np.mean([baseline[s].aggregate(baseline[s].values[unit_rows]) for s in seed_rows])
        return float(a - b)

    every_unit = np.arange(count)
    observed = difference(range(seeds), every_unit)
    rng = np.random.default_rng(seed)
    draws = np.empty(resamples)
    for index in range(resamples):
        seed_rows = rng.integers(0, seeds, seeds)
        unit_rows = rng.integers(0, count, count)
        draws[index] = difference(seed_rows, unit_rows)
    low, high = np.percentile(draws, [2.5, 97.5])
    return Comparison(observed, float(low), float(high))
