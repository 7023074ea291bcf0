"""The tiny DiT models sample through core's KSampler on every family the host runs."""

import pytest
import torch

from dit_helpers import ksample, tiny_dit
from tiny_models import dit_factory

FAMILIES = sorted(dit_factory.DIT_FAMILIES)


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_dit_samples_with_real_block_layout(family):
    model = tiny_dit(family)
    dm = model.get_model_object("diffusion_model")
    heads_dim = {"sd35": 64}.get(family, 128)
    if hasattr(dm, "double_blocks"):
        assert dm.double_blocks[0].num_heads == 2 and dm.hidden_size // dm.num_heads == heads_dim
        assert len(dm.single_blocks) == 3
    out = ksample(model, family, panels=2)
    assert out.shape[0] == 2 and torch.isfinite(out).all() and float(out.std()) > 0
    assert not torch.equal(out[0], out[1])


def test_tiny_flux_clip_encodes_with_the_real_tokenizers():
    clip = dit_factory.tiny_flux_clip()
    tokens = clip.tokenize("a man with short black hair")
    assert set(tokens) == {"l", "t5xxl"}
    cond, pooled = clip.encode_from_tokens(tokens, return_pooled=True)
    assert cond.shape == (1, 256, dit_factory.TEXT_WIDTH) and pooled.shape == (1, 768)
