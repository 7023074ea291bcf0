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
    out = bank_nodes.IdentityBankWrite().sample(
        model, names=names, bank=bank, positive=dit_factory.conditioning(family, panels, seed=1),
        negative=dit_factory.conditioning(family, panels, seed=2),
        latent_image={"samples": dit_factory.empty_latent(family, panels, 8, 12)},
        seed=0, steps=2, cfg=2.0, sampler_name="euler", scheduler="simple",
    )  # fmt: skip
    return out["result"][1]  # (LATENT, IDENTITY_BANK); "ui" shows the bank's size


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


def test_dit_bank_write_stores_the_bank_keep_rate():
    """bank_keep_rate applies on DiTs: round(0.25 x 24) image tokens per identity image and layer."""
    from tiny_models import dit_factory

    model = csa(tiny_dit("flux"), **ALWAYS)
    out = bank_nodes.IdentityBankWrite().sample(
        model, names="Bob", positive=dit_factory.conditioning("flux", 2, seed=1),
        negative=dit_factory.conditioning("flux", 2, seed=2),
        latent_image={"samples": dit_factory.empty_latent("flux", 2, 8, 12)},
        seed=0, steps=2, cfg=2.0, sampler_name="euler", scheduler="simple",
        bank_keep_rate=0.25, between_steps="interpolate", precision="fp16",
    )  # fmt: skip
    bank = out["result"][1]
    layer = bank.layers("Bob")[0]
    assert {bank.tokens("Bob", s, layer).shape[0] for s in bank.sigmas("Bob")} == {2 * 6}


def test_dit_bank_of_other_token_widths_is_a_clear_error():
    """A bank whose tokens do not fit the layer (same family name, other widths) is refused, as on
    UNets, instead of being skipped without a word."""
    dm = tiny_dit("flux").get_model_object("diffusion_model")
    bank = IdentityBank(family="Flux", name="wide.safetensors")
    for i in range(len(dm.double_blocks)):
        bank.record("Bob", 1.0, ("double", i, 0), torch.ones(4, 6))
    for i in range(len(dm.single_blocks)):
        bank.record("Bob", 1.0, ("single", i, 0), torch.ones(4, 6))
    with pytest.raises(ValueError, match=r"wide\.safetensors holds \[Bob\] tokens of width 6 .* takes 512"):
        ksample(read("flux", bank), "flux", panels=2, steps=2, seed=7)
