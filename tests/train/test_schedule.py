"""lntune's learning-rate schedules are transformers' get_scheduler ones, step for step (without importing it)."""

import pytest
import torch

from lntune.train.optim import make_scheduler


@pytest.mark.parametrize("name,theirs", [("cosine", "cosine"), ("linear", "linear"),
                                         ("constant", "constant_with_warmup")])
@pytest.mark.parametrize("total,warmup_ratio", [(37, 0.03), (10, 0.0), (5, 0.5), (1, 0.03)])
def test_schedules_equal_transformers(name, theirs, total, warmup_ratio):
    import math

    from transformers import get_scheduler

    def optimizer():
        return torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)

    ours = make_scheduler(optimizer(), name, total, warmup_ratio)
    reference = get_scheduler(theirs, optimizer(), num_warmup_steps=math.ceil(warmup_ratio * total),
                              num_training_steps=total)
    for _ in range(total + 2):
        assert ours.get_last_lr() == reference.get_last_lr()
        ours.optimizer.step()
        reference.optimizer.step()
        ours.step()
        reference.step()
    assert ours.state_dict() == reference.state_dict()  # checkpoints of either resume alike
