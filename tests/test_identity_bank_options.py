"""Identity Bank Write's storage options through real sampling on tiny models: each option's
write -> save -> load -> read round trip, the size formula against the recorded bytes, the default
against the full bank, banks from another model family, damaged bank files."""

import pytest
import torch

import comfy.sample

from isolated_helpers import encode_story, isolated
from pack_loader import pure, submodule
from test_consistent_sampling import BASE, conds, csa

bank_nodes = submodule("nodes.identity_bank_nodes")
bank_files = submodule("nodes.identity_bank_files")
common = submodule("nodes.common")
IdentityBank = submodule("attention.identity_bank").IdentityBank
bs = submodule("attention.bank_storage")
parse_story = pure("story.syntax").parse_story

SETTINGS = dict(BASE, apply_probability="1")  # CSA defaults (warm-up 1, up blocks), every layer every step
OPTIONS = {  # one value of each option away from the full bank, then the default
    "bank_steps": dict(bank_steps=2, bank_keep_rate=0.0, precision="fp16"),
    "bank_keep_rate": dict(bank_steps=0, bank_keep_rate=0.25, precision="fp16"),
    "precision": dict(bank_steps=0, bank_keep_rate=0.0, precision="int8"),
    "guidance_halves": dict(bank_steps=0, bank_keep_rate=0.0, precision="fp16", guidance_halves="cond only"),
    "between_steps": dict(bank_steps=2, bank_keep_rate=0.0, precision="fp16", between_steps="interpolate"),
    "default": dict(),
}
FULL = dict(
    bank_steps=0, bank_keep_rate=0.0, precision="fp16", guidance_halves="both", between_steps="nearest"
)
# Default vs full bank, mean abs over the final latents of 4 frames:
# |latent(default) - latent(full)| <= TOLERANCE x |latent(no bank) - latent(full)|.
# docs/csa-and-banks.md states it; bench/bench_bank.py prints this ratio (tiny SDXL, 30 steps, and tiny
# SD1.5, 10 steps).
TOLERANCE = 0.5


def sample(model, clip, n=2, steps=4, seed=0):
    """CFG with a negative prompt that differs from the positive (the guidance halves differ)."""
    latent = torch.zeros(n, 4, 8, 8)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    return comfy.sample.sample(
        model,
        noise,
        steps,
        5.0,
        "euler",
        "normal",
        conds(clip, n),
        conds(clip, n, "blurry, low quality"),
        latent,
        seed=seed,
    )


def write(model, clip, n=2, steps=4, names="Bob", seed=0, **options):
    """Identity Bank Write (samples the identity images); `seed` is CSA's (the token draw)."""
    out = bank_nodes.IdentityBankWrite().sample(
        csa(model, **dict(SETTINGS, seed=seed)),
        names=names,
        positive=conds(clip, n),
        negative=conds(clip, n, "blurry, low quality"),
        latent_image={"samples": torch.zeros(n, 4, 8, 8)},
        seed=1,
        steps=steps,
        cfg=5.0,
        sampler_name="euler",
        scheduler="normal",
        **options,
    )
    return out["result"][1]


def read(model, clip, bank, n=2, steps=4, names="Bob"):
    m = bank_nodes.IdentityBankRead().patch(csa(model, **SETTINGS), bank, names=names)[0]
    return sample(m, clip, n=n, steps=steps, seed=2)


@pytest.fixture(scope="module")
def sd15(tiny):
    model, clip, _ = tiny("sd15")
    return model, clip


@pytest.mark.parametrize("option", list(OPTIONS))
def test_each_option_round_trips_through_a_file_and_reads_the_same(sd15, tmp_path, option):
    model, clip = sd15
    bank = write(model, clip, **OPTIONS[option])
    full = write(model, clip, **FULL)
    assert 0 < bank.nbytes < full.nbytes  # every option stores less than the full bank
    loaded = IdentityBank.load(bank.save(tmp_path / "bank.safetensors"))
    assert (
        loaded.settings == bank.settings
        and loaded.family == "SD15"
        and loaded.sigmas("Bob") == bank.sigmas("Bob")
    )
    for layer in bank.layers("Bob"):
        for s in bank.sigmas("Bob") + [5.0, 0.5]:
            for half in (0, 1):
                assert torch.equal(loaded.tokens("Bob", s, layer, half), bank.tokens("Bob", s, layer, half))
    frames = read(model, clip, bank)
    assert torch.equal(read(model, clip, loaded), frames)
    assert not torch.equal(frames, read(model, clip, full))  # the option changes what is read


def test_what_each_option_records(sd15):
    model, clip = sd15
    full = write(model, clip, **FULL)
    assert len(full.sigmas("Bob")) == 4  # every step of the 4-step run, warm-up included
    steps = write(model, clip, **OPTIONS["bank_steps"])
    assert steps.sigmas("Bob") == [full.sigmas("Bob")[1], full.sigmas("Bob")[3]]  # 2 steps after warm-up
    layer = full.layers("Bob")[0]
    rate = write(model, clip, **OPTIONS["bank_keep_rate"])
    assert rate.tokens("Bob", 1.0, layer).shape[0] * 2 == full.tokens("Bob", 1.0, layer).shape[0]
    halves = write(model, clip, **OPTIONS["guidance_halves"])
    assert torch.equal(halves.tokens("Bob", 1.0, layer, half=1), halves.tokens("Bob", 1.0, layer, half=0))
    assert halves.nbytes * 2 == full.nbytes
    int8 = write(model, clip, **OPTIONS["precision"])
    a, b = int8.tokens("Bob", 1.0, layer).float(), full.tokens("Bob", 1.0, layer).float()
    assert 0 < float((a - b).abs().max()) <= float(b.abs().max()) / 127


def _layer_shapes(model, clip):
    shapes = {}
    m = model.clone()

    def grab(n, context, value, extra):
        if extra.get("block", ("",))[0] == "output":
            shapes[(extra["block"][1], extra.get("block_index", 0))] = (int(n.shape[1]), int(n.shape[2]))
        return n, context, value

    m.set_model_attn1_patch(grab)
    sample(m, clip, n=1, steps=1)
    return [shapes[k] for k in sorted(shapes)]


@pytest.mark.parametrize("option", ["default", "bank_steps", "guidance_halves"])
def test_size_formula_equals_the_recorded_bytes(sd15, option):
    model, clip = sd15
    layers = _layer_shapes(model, clip)
    bank = write(model, clip, n=2, steps=6, **OPTIONS[option])
    settings = bank.settings_of("Bob")
    assert bank.identity_images == {"Bob": 2}
    assert bank.nbytes == 2 * bs.bank_bytes(layers, 6, settings, csa_rate=0.5, warmup=1)
    assert "per identity image" in bank.summary()


def test_default_bank_stays_within_the_tolerance_of_the_full_bank(sd15):
    model, clip = sd15
    full = write(model, clip, n=1, steps=10, **FULL)
    ref = read(model, clip, full, n=4, steps=10)

    def deviation(bank, names="Bob"):  # mean abs over the final latents of 4 frames
        return float((read(model, clip, bank, n=4, steps=10, names=names) - ref).abs().mean())

    no_bank = deviation(full, names="NC")
    ratio = deviation(write(model, clip, n=1, steps=10)) / no_bank
    redrawn = (
        deviation(write(model, clip, n=1, steps=10, seed=1, **FULL)) / no_bank
    )  # the measure's noise floor
    print(f"default / no bank = {ratio:.3f}; full bank with another token draw / no bank = {redrawn:.3f}")
    assert ratio <= TOLERANCE < 1.0, (ratio, redrawn)


def test_same_write_gives_the_same_file_bytes(sd15, tmp_path):
    model, clip = sd15
    a = write(model, clip).save(tmp_path / "a.safetensors").read_bytes()
    b = write(model, clip).save(tmp_path / "b.safetensors").read_bytes()
    assert a == b


# ---- another model family -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def sd15_bank(sd15, tmp_path_factory):
    model, clip = sd15
    path = write(model, clip).save(tmp_path_factory.mktemp("banks") / "bob_sd15.safetensors")
    return IdentityBank.load(path)


def test_a_bank_from_another_family_is_a_clear_error_in_identity_bank_read(tiny, sd15_bank):
    sdxl, clip, _ = tiny("sdxl")
    with pytest.raises(
        common.StoryError,
        match=r"Identity Bank Read: identity bank bob_sd15\.safetensors was written "
        r"with a SD15 model .* but the model connected to Identity Bank Read "
        r"is SDXL",
    ):
        m = bank_nodes.IdentityBankRead().patch(csa(sdxl, **SETTINGS), sd15_bank, names="Bob")[0]
        sample(m, clip, n=1, steps=2)


def test_a_bank_from_another_family_is_a_clear_error_in_isolated_attention(tiny, sd15_bank):
    sdxl, clip, _ = tiny("sdxl")
    pos, neg, story, panels = encode_story(clip)
    with pytest.raises(
        common.StoryError, match=r"Isolated Attention: identity bank bob_sd15\.safetensors .*SD15.*SDXL"
    ):
        isolated(sdxl, clip, story, identity_bank=sd15_bank)


def test_extending_a_bank_of_another_family_is_a_clear_error(tiny, sd15_bank):
    sdxl, _, _ = tiny("sdxl")
    with pytest.raises(
        common.StoryError, match=r"Identity Bank Write \(deprecated\): identity bank bob_sd15\.safetensors"
    ):
        bank_nodes.IdentityBankWritePatch().patch(csa(sdxl, **SETTINGS), names="Ann", bank=sd15_bank)


def test_a_damaged_bank_file_names_the_node_and_the_file(tmp_path, monkeypatch):
    import folder_paths

    bad = tmp_path / "broken.safetensors"
    bad.write_bytes(b"\xff" * 64)  # as a truncated download: a header length far beyond the file
    monkeypatch.setattr(folder_paths, "get_full_path", lambda folder, name: str(bad))
    with pytest.raises(
        common.StoryError,
        match=r"Load Identity Bank: bank_file 'broken\.safetensors' cannot be read: "
        r"broken\.safetensors is damaged or incomplete.*Save the bank again",
    ):
        bank_files.LoadIdentityBank().load("broken.safetensors")


def test_write_options_are_validated(sd15):
    model, _ = sd15
    with pytest.raises(common.StoryError, match="Identity Bank Write: precision must be one of int8, fp16"):
        bank_nodes.IdentityBankWrite().sample(
            model,
            names="Bob",
            positive=[],
            negative=[],
            latent_image={"samples": torch.zeros(1, 4, 8, 8)},
            seed=0,
            steps=1,
            cfg=1.0,
            sampler_name="euler",
            scheduler="normal",
            precision="int4",
        )


def test_write_names_not_in_the_story_are_a_clear_error(sd15):
    """With a story, `names` chooses the characters recorded; a name the story lacks (it was
    ignored without a word) names the input and the story's characters."""
    model, clip = sd15
    story = parse_story("[Bob]: a man\n[Ann]: a woman\n[Bob] portrait\n[Ann] portrait\n[Bob] [Ann] together")
    assert bank_nodes.write_labels(story, "Bob", "W") == ("Bob", None, None)
    assert bank_nodes.write_labels(story, "", "W") == ("Bob", "Ann", None)
    with pytest.raises(
        common.StoryError, match=r"names lists Carol, which the connected story does not .*Bob, Ann"
    ):
        bank_nodes.IdentityBankWrite().sample(
            model, story=story, names="Carol", positive=[], negative=[],
            latent_image={"samples": torch.zeros(3, 4, 8, 8)},
            seed=0, steps=1, cfg=1.0, sampler_name="euler", scheduler="normal",
        )  # fmt: skip
