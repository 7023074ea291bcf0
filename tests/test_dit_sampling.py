"""Consistent Self-Attention on the tiny DiTs through the real node and core's KSampler."""

import pytest
import torch

from dit_helpers import ksample, tiny_dit
from pack_loader import submodule
from tiny_models import dit_factory

FAMILIES = sorted(dit_factory.DIT_FAMILIES)
ALWAYS = {"warmup_steps": 0, "apply_probability": "1", "blocks": "all"}


def csa(model, **overrides):
    node = submodule("nodes.consistent_attention").ConsistentSelfAttention()
    settings = {"keep_rate_1_8": 0.5, "keep_rate_1_16": 0.5, "keep_rate_1_32": 0.5, "keep_rate_1_64": 0.5,
                "blocks": "up", "warmup_steps": 1, "start_percent": 0.0, "end_percent": 100.0,
                "apply_probability": "0.7, 0.9@40", "window": 0, "seed": 0, "strength": 1.0}
    settings.update(overrides)
    return node.patch(model, **settings)[0]


@pytest.mark.parametrize("family", FAMILIES)
def test_parity_strength_zero_batch_of_one_keep_rate_zero(family):
    model = tiny_dit(family)
    plain = ksample(model, family, panels=3)
    assert torch.equal(ksample(csa(model, strength=0.0, **ALWAYS), family, panels=3), plain)
    zero = csa(model, keep_rate_double=0.0, keep_rate_single=0.0, **ALWAYS)
    assert torch.equal(ksample(zero, family, panels=3), plain)
    one = ksample(model, family, panels=1)
    assert torch.equal(ksample(csa(model, **ALWAYS), family, panels=1), one)
    shared = ksample(csa(model, **ALWAYS), family, panels=3)
    assert not torch.allclose(shared, plain, atol=1e-4), "sharing changed nothing"
