"""A sampling step whose model output is NaN/Inf stops with an error naming the step (never a black video)."""

import pytest
import torch
from torch import nn

from hyvideo_fp8.hunyuan.sampler import NonFiniteStepError, sample


class Overflows(nn.Module):
    """Velocity -x until ``bad_step`` (0-based call count), then one NaN (or Inf) element."""

    def __init__(self, bad_step: int, value: float):
        super().__init__()
        self.bad_step, self.value, self.calls = bad_step, value, 0

    def forward(self, x, timestep, context, y, guidance=None, attention_mask=None, transformer_options=None, **kw):
        v = -x.clone()
        if self.calls == self.bad_step:
            v[0, 0, 0, 0, 0] = self.value
        self.calls += 1
        return v


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_nonfinite_step_is_named(value):
    model = Overflows(bad_step=2, value=value)
    seen = []
    with pytest.raises(NonFiniteStepError, match=r"sampling step 3 of 5 \(sigma 0\.\d+\) gave NaN/Inf"):
        sample(model, (1, 4, 3, 4, 6), torch.randn(1, 5, 8), torch.randn(1, 3), steps=5, seed=0,
               callback=lambda i, n, x0: seen.append(i))
    assert model.calls == 3 and seen == [0, 1]  # stopped at once: no callback saw the bad estimate


def test_finite_run_is_unchanged():
    x = sample(Overflows(bad_step=-1, value=0.0), (1, 4, 3, 4, 6), torch.randn(1, 5, 8), torch.randn(1, 3), steps=4)
    assert torch.isfinite(x).all()
