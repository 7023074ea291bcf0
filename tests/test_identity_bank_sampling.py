"""Identity bank write/read through real sampling on the tiny SD1.5-shaped model."""

import pytest
import torch

from pack_loader import pure, submodule
from test_consistent_sampling import ALWAYS, close, conds, csa, sample

bank_nodes = submodule("nodes.identity_bank_nodes")
common = submodule("nodes.common")
IdentityBank = submodule("attention.identity_bank").IdentityBank
parse_story = pure("story.syntax").parse_story
SETTINGS = dict(ALWAYS, blocks="up")


def write(model, clip, names="Bob", n=2, bank=None, story=None, seed=0):
    """Identity Bank Write: samples the identity images and returns (latent, bank)."""
    c = conds(clip, n)
    latent, out_bank = bank_nodes.IdentityBankWrite().sample(
        csa(model, **SETTINGS),
        story=story,
        names=names,
        bank=bank,
        positive=c,
        negative=c,
        latent_image={"samples": torch.zeros(n, 4, 8, 8)},
        seed=seed,
        steps=2,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
    )
    assert latent["samples"].shape == (n, 4, 8, 8)
    return out_bank


def write_with_deprecated_node(model, clip, names="Bob", n=2, bank=None, callback=None):
    """The earlier write node: a patched MODEL and a bank filled by a later sampler run."""
    m, out_bank = bank_nodes.IdentityBankWritePatch().patch(csa(model, **SETTINGS), names=names, bank=bank)
    sample(m, clip, n=n, callback=callback)
    return out_bank


def read(model, bank, names="Bob", story=None):
    return bank_nodes.IdentityBankRead().patch(csa(model, **SETTINGS), bank, story=story, names=names)[0]


@pytest.fixture(scope="module")
def written(tiny):
    model, clip, _ = tiny("sd15")
    return model, clip, write(model, clip)


def test_write_records_tokens_per_character_step_and_layer(written):
    model, clip, bank = written
    assert bank.characters == ["Bob"]
    assert len(bank.sigmas("Bob")) == 2  # every step of the 2-step run
    layers = bank.layers("Bob")
    assert layers and all(layer[0] == "output" for layer in layers)  # the 'up' blocks only
    t = bank.tokens("Bob", bank.sigmas("Bob")[1], layers[0])
    assert t.dtype == torch.float16 and t.device.type == "cpu" and t.ndim == 2
    assert bank.tokens("Bob", 1.0, layers[0], half=1) is not None  # both guidance halves


def test_read_attends_to_the_bank_and_untagged_frames_are_unchanged(written):
    model, clip, bank = written
    vanilla = sample(model, clip, n=2)
    assert torch.equal(sample(read(model, bank, names="NC"), clip, n=2), vanilla)
    frames = sample(read(model, bank, names="Bob"), clip, n=2)
    assert not torch.equal(frames, vanilla)
    assert torch.equal(frames, sample(read(model, bank, names="Bob"), clip, n=2))
    story = parse_story("[Bob]: a man in a red jacket\n[NC] an empty street\n[Bob] at the sea")
    mixed = sample(read(model, bank, names="", story=story), clip, n=2)
    assert close(mixed[0], vanilla[0]) and close(mixed[1], frames[1])


def test_save_load_gives_identical_frames(written, tmp_path):
    model, clip, bank = written
    loaded = IdentityBank.load(bank.save(tmp_path / "bob.safetensors"))
    assert torch.equal(sample(read(model, bank), clip, n=2), sample(read(model, loaded), clip, n=2))


def test_missing_character_and_wrong_batch_are_clear_errors(written):
    model, clip, bank = written
    with pytest.raises(common.StoryError, match=r"Identity Bank Read.*\[Alice\].*holds \[Bob\]"):
        sample(read(model, bank, names="Alice"), clip, n=1)
    with pytest.raises(common.StoryError, match="batch is 2"):
        sample(read(model, bank, names="Bob, Bob, Bob"), clip, n=2)
    with pytest.raises(common.StoryError, match="Identity Bank Write"):
        bank_nodes.IdentityBankWritePatch().patch(model, names=" , ")


def test_interrupted_write_leaves_the_bank_as_it_was(written):
    model, clip, bank = written

    def stop(step, *args):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_with_deprecated_node(model, clip, names="Alice", n=1, bank=bank, callback=stop)
    assert bank.characters == ["Bob"]


def test_two_characters_in_one_write_batch_from_a_story(written):
    model, clip, bank = written
    story = parse_story("[Bob]: a man\n[Ann]: a woman\n[Bob] portrait\n[Ann] portrait\n[Bob] [Ann] together")
    both = write(model, clip, names="", n=3, story=story, bank=bank)
    assert both.characters == ["Ann", "Bob"]
    layer, sigma = both.layers("Ann")[0], both.sigmas("Ann")[0]
    assert (
        both.tokens("Ann", sigma, layer).shape == both.tokens("Bob", sigma, layer).shape
    )  # one solo image each
    # Bob's and Ann's identity images share no tokens while written: re-noising Ann's image changes
    # none of Bob's recorded tokens (bit for bit), and all of Ann's
    import comfy.sample

    def bank_from(noise):
        m, out = bank_nodes.IdentityBankWritePatch().patch(csa(model, **SETTINGS), story=story)
        c = conds(clip, 3)
        comfy.sample.sample(m, noise, 2, 5.0, "euler", "normal", c, c, torch.zeros_like(noise), seed=0)
        return out

    noise = torch.randn(3, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    other = noise.clone()
    other[1] = torch.randn(4, 8, 8, generator=torch.Generator().manual_seed(5))
    first, second = bank_from(noise), bank_from(other)
    for layer in first.layers("Bob"):
        for sigma in first.sigmas("Bob"):
            assert torch.equal(first.tokens("Bob", sigma, layer), second.tokens("Bob", sigma, layer))
            assert not torch.equal(first.tokens("Ann", sigma, layer), second.tokens("Ann", sigma, layer))


def test_deprecated_write_node_still_writes_the_same_bank(written, tmp_path):
    """A saved workflow of the patch-only write node + KSampler gives the bank the sampling node gives."""
    import nodes as comfy_nodes

    model, clip, bank = written
    m, old_bank = bank_nodes.IdentityBankWritePatch().patch(csa(model, **SETTINGS), names="Bob")
    c = conds(clip, 2)
    comfy_nodes.common_ksampler(m, 0, 2, 5.0, "euler", "normal", c, c, {"samples": torch.zeros(2, 4, 8, 8)})
    assert old_bank.characters == bank.characters
    layer = bank.layers("Bob")[0]
    for sigma in bank.sigmas("Bob"):
        assert torch.equal(old_bank.tokens("Bob", sigma, layer), bank.tokens("Bob", sigma, layer))
