"""Identity bank write/read on the tiny DiTs through the real nodes and core's KSampler."""

import pytest
import torch

from dit_helpers import ksample, tiny_dit
from pack_loader import submodule
from test_dit_sampling import ALWAYS, csa

bank_nodes = submodule("nodes.identity_bank_nodes")
IdentityBank = submodule("attention.identity_bank").IdentityBank


def write(family, names="Bob", panels=2, bank=None):
    """The sampling write node (LATENT + IDENTITY_BANK) on the tiny DiT."""
    from tiny_models import dit_factory

    model = csa(tiny_dit(family), **ALWAYS)
    _, out_bank = bank_nodes.IdentityBankWrite().sample(
        model, names=names, bank=bank, positive=dit_factory.conditioning(family, panels, seed=1),
        negative=dit_factory.conditioning(family, panels, seed=2),
        latent_image={"samples": dit_factory.empty_latent(family, panels, 8, 12)},
        seed=0, steps=2, cfg=2.0, sampler_name="euler", scheduler="simple",
    )  # fmt: skip
    return out_bank


def read(family, bank, names="Bob"):
    return bank_nodes.IdentityBankRead().patch(csa(tiny_dit(family), **ALWAYS), bank, names=names)[0]


@pytest.mark.parametrize("family", ["flux", "qwen_image", "sd35", "z_image"])
def test_dit_bank_write_read_save_load(family, tmp_path):
    bank = write(family)
    assert bank.characters == ["Bob"] and len(bank.sigmas("Bob")) == 2
    layers = bank.layers("Bob")
    dm = tiny_dit(family).get_model_object("diffusion_model")
    kinds = {layer[0] for layer in layers}
    assert kinds <= {"double", "single", "self"} and layers
    if hasattr(dm, "single_blocks"):
        assert kinds == {"double", "single"}
    t = bank.tokens("Bob", bank.sigmas("Bob")[0], layers[0])
    assert t.dtype == torch.float16 and t.ndim == 2 and bank.tokens("Bob", 1.0, layers[0], half=1) is not None
    plain = ksample(tiny_dit(family), family, panels=2, steps=2, seed=7)
    assert torch.equal(ksample(read(family, bank, names="NC"), family, panels=2, steps=2, seed=7), plain)
    frames = ksample(read(family, bank), family, panels=2, steps=2, seed=7)
    assert not torch.allclose(frames, plain, atol=1e-4)
    loaded = IdentityBank.load(bank.save(tmp_path / "bob.safetensors"))
    assert torch.equal(ksample(read(family, loaded), family, panels=2, steps=2, seed=7), frames)
    mixed = ksample(read(family, bank, names="Bob, NC"), family, panels=2, steps=2, seed=7)
    assert torch.equal(
        mixed[1], ksample(read(family, bank, names="NC, NC"), family, panels=2, steps=2, seed=7)[1]
    )


def test_dit_bank_missing_character_is_a_clear_error():
    bank = write("flux")
    with pytest.raises(submodule("nodes.common").StoryError, match=r"\[Alice\].*holds \[Bob\]"):
        ksample(read("flux", bank, names="Alice"), "flux", panels=1, steps=2)
