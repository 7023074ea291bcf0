"""Identity bank storage: the size levers, int8 tokens, reproducible and lazily read files, old files,
damaged files, and the family / width check (pure torch, no ComfyUI)."""

import json
from pathlib import Path

import pytest
import torch

from pack_loader import pure

ib = pure("attention.identity_bank")
bs = pure("attention.bank_storage")
DATA = Path(__file__).resolve().parent / "data"
LAYERS = (("output", 3, 0), ("output", 0, 1))


def _bank(settings=None, family="SDXL", seed=0):
    g = torch.Generator().manual_seed(seed)
    bank = ib.IdentityBank(
        settings=settings or bs.DEFAULT, family=family, widths={LAYERS[0]: 8, LAYERS[1]: 16}
    )
    for sigma in (14.6, 7.0, 3.0):
        for half in (0, 1):
            bank.record("Bob", sigma, LAYERS[0], torch.randn(6, 8, generator=g), half=half, images=2)
            bank.record("Bob", sigma, LAYERS[1], torch.randn(4, 16, generator=g), half=half, images=2)
    bank.record("Ann", 7.0, LAYERS[0], torch.randn(5, 8, generator=g), images=1)
    return bank


def test_recorded_steps_spread_over_the_steps_after_warmup():
    assert bs.recorded_steps(30, 10, warmup=1) == (1, 4, 7, 10, 13, 17, 20, 23, 26, 29)
    assert bs.recorded_steps(30, 0, warmup=1) == tuple(range(30))  # 0 = every step, warm-up included
    assert bs.recorded_steps(4, 10, warmup=1) == (1, 2, 3)
    assert bs.recorded_steps(30, 1, warmup=1) == (15,)
    s = bs.BankSettings(steps=3)
    assert [t for t in range(10) if s.records_step(t, 10, 1)] == [1, 5, 9]


def test_settings_are_validated_and_round_trip_as_json():
    with pytest.raises(ValueError, match="precision must be one of int8, fp16"):
        bs.BankSettings(precision="int4")
    with pytest.raises(ValueError, match="keep_rate must be within 0..1"):
        bs.BankSettings(keep_rate=1.5)
    s = bs.BankSettings(steps=4, keep_rate=0.3, precision="fp16", halves="cond only", between="interpolate")
    assert bs.BankSettings.from_json(s.to_json()) == s


def test_int8_tokens_are_within_half_a_step_of_the_scale_per_token():
    x = torch.randn(64, 320) * torch.linspace(0.01, 30, 64)[:, None]
    x[3] = 0  # an all-zero token stays zero
    p = bs.Packed.pack(x, "int8")
    assert p.values.dtype == torch.int8 and p.scale.dtype == torch.float32 and p.nbytes == 64 * (320 + 4)
    err = (p.unpack(torch.float32) - x).abs().amax(dim=1)
    assert bool((err <= x.abs().amax(dim=1) / 127 * 0.5 + 1e-6).all())
    assert float(p.unpack(torch.float32)[3].abs().max()) == 0


def test_positions_redrawn_per_step_or_kept_for_interpolation():
    near = bs.BankSettings(keep_rate=0.25)
    a, b = near.positions(2, 64, 0.5, 0, 7.0), near.positions(2, 64, 0.5, 0, 3.0)
    assert a.shape == (2, 16) and not torch.equal(a, b)
    interp = bs.BankSettings(keep_rate=0.25, between="interpolate")
    assert torch.equal(interp.positions(2, 64, 0.5, 0, 7.0), interp.positions(2, 64, 0.5, 0, 3.0))
    assert near.positions(2, 64, 0.0, 0, 7.0) is None  # nothing where CSA shares nothing
    full = bs.FULL.positions(2, 64, 0.5, 0, 7.0)  # the full bank stores exactly the tokens CSA shares
    assert torch.equal(full, pure("attention.token_sampling").sample_token_indices(2, 64, 0.5, 0, 7.0))


def test_interpolated_read_blends_the_two_recorded_steps_in_sigma():
    bank = ib.IdentityBank(settings=bs.BankSettings(precision="fp16", between="interpolate"))
    bank.record("Bob", 10.0, LAYERS[0], torch.full((2, 8), 10.0))
    bank.record("Bob", 2.0, LAYERS[0], torch.full((2, 8), 2.0))
    assert float(bank.tokens("Bob", 4.0, LAYERS[0])[0, 0]) == 4.0
    assert float(bank.tokens("Bob", 20.0, LAYERS[0])[0, 0]) == 10.0  # outside: the nearest
    nearest = ib.IdentityBank(settings=bs.BankSettings(precision="fp16"))
    nearest.update_from(bank)  # a character keeps the settings it was written with
    assert float(nearest.tokens("Bob", 4.0, LAYERS[0])[0, 0]) == 4.0


def test_same_bank_same_file_bytes(tmp_path):
    first = _bank().save(tmp_path / "a.safetensors").read_bytes()
    for i in range(3):
        assert _bank().save(tmp_path / f"b{i}.safetensors").read_bytes() == first


def test_file_is_standard_safetensors_with_the_settings_family_widths_and_size(tmp_path):
    from safetensors import safe_open

    bank = _bank()
    path = bank.save(tmp_path / "bank.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert len(list(f.keys())) == 2 * len(bank)  # int8 values + scale per entry
    assert meta["family"] == "SDXL" and json.loads(meta["widths"]) == {"output.0.1": 16, "output.3.0": 8}
    assert bs.BankSettings.from_json(meta["settings"]) == bs.DEFAULT
    assert (
        int(meta["size_bytes"])
        == bank.nbytes
        == sum(6 * (8 + 4) * 2 * 3 + 4 * (16 + 4) * 2 * 3 for _ in [0]) + 5 * (8 + 4)
    )
    chars = json.loads(meta["characters"])
    assert chars["Bob"]["identity_images"] == 2 and chars["Bob"]["bytes"] == bank.character_bytes("Bob")


@pytest.mark.parametrize("precision", ["int8", "fp16"])
def test_lazy_load_reads_only_what_a_run_asks_for_and_release_drops_it(tmp_path, monkeypatch, precision):
    bank = _bank(bs.BankSettings(precision=precision))
    path = bank.save(tmp_path / "bank.safetensors")
    reads = []
    real = bs.SafetensorsFile.read
    monkeypatch.setattr(bs.SafetensorsFile, "read", lambda self, name: reads.append(name) or real(self, name))
    loaded = ib.IdentityBank.load(path)
    assert reads == [] and loaded.characters == ["Ann", "Bob"] and loaded.sigmas("Bob") == [14.6, 7.0, 3.0]
    assert loaded.nbytes == bank.nbytes and loaded.identity_images == {"Bob": 2, "Ann": 1}
    t = loaded.tokens("Bob", 6.0, LAYERS[0], half=1)
    assert torch.equal(t, bank.tokens("Bob", 6.0, LAYERS[0], half=1)) and t.dtype == torch.float16
    assert len(reads) == (2 if precision == "int8" else 1)
    loaded.tokens("Bob", 7.0, LAYERS[0], half=1)
    assert len(reads) == (2 if precision == "int8" else 1)  # cached during the run
    loaded.release()
    assert loaded._cache == {}
    loaded.tokens("Bob", 7.0, LAYERS[0], half=1)
    assert len(reads) == (4 if precision == "int8" else 2)
    for s in (14.6, 7.0, 3.0, 1.0):  # a run walks down the steps: only a few steps stay unpacked
        loaded.tokens("Bob", s, LAYERS[1])
    assert len(loaded._cache) <= ib.CACHED_STEPS


def test_format_1_file_of_the_previous_version_still_loads_and_reads_the_same():
    """tests/data/identity_bank_format1.safetensors was written by the previous version's
    IdentityBank.save (every step, fp16, no family): seeded random tokens, regenerated here."""
    g = torch.Generator().manual_seed(0)
    expected = {}
    for sigma in (14.6, 7.0, 3.0):
        for half in (0, 1):
            expected[("Bob", half, LAYERS[0], sigma)] = torch.randn(6, 8, generator=g).half()
            expected[("Bob", half, LAYERS[1], sigma)] = torch.randn(4, 16, generator=g).half()
    expected[("Ann Lee", 0, LAYERS[0], 7.0)] = torch.randn(5, 8, generator=g).half()
    bank = ib.IdentityBank.load(DATA / "identity_bank_format1.safetensors")
    assert bank.characters == ["Ann Lee", "Bob"] and bank.family is None and bank.settings == bs.FULL
    for (c, half, layer, sigma), t in expected.items():
        assert torch.equal(bank.tokens(c, sigma, layer, half), t)
    assert torch.equal(bank.tokens("Bob", 6.0, LAYERS[0]), expected[("Bob", 0, LAYERS[0], 7.0)])  # nearest
    bank.check_model("SDXL", {LAYERS[0]: 8, LAYERS[1]: 16, ("output", 5, 0): 8})  # widths from the shapes
    with pytest.raises(
        ib.BankMismatch,
        match=r"identity_bank_format1.safetensors.*unknown model family.*"
        r"output\.0\.1 holds tokens of width 16",
    ):
        bank.check_model("SD15", {LAYERS[0]: 8, LAYERS[1]: 32})


def test_other_family_or_widths_is_a_clear_mismatch():
    bank = _bank()
    bank.check_model("SDXL", {LAYERS[0]: 8, LAYERS[1]: 16})
    with pytest.raises(ib.BankMismatch, match=r"written with a SDXL model .* but the model is SD15"):
        bank.check_model("SD15", {LAYERS[0]: 8, LAYERS[1]: 16}, model="the model")
    with pytest.raises(
        ib.BankMismatch, match=r"output\.3\.0 holds tokens of width 8, the model's has no such layer"
    ):
        bank.check_model("SDXL", {LAYERS[1]: 16}, model="the model")
    other = ib.IdentityBank(family="SD15", widths={LAYERS[0]: 4})
    with pytest.raises(ib.BankMismatch):
        other.update_from(bank)


@pytest.mark.parametrize(
    "damage, message",
    [
        ("garbage", "damaged or incomplete: its header claims"),
        ("truncated", "damaged or incomplete: tensor .* outside"),
        ("huge header", "damaged or incomplete: its header claims"),
        ("not a bank", "is not an identity bank file"),
        ("bad index", "damaged: its identity bank metadata cannot be read"),
    ],
)
def test_damaged_files_fail_with_a_clear_message(tmp_path, damage, message):
    path = tmp_path / "bank.safetensors"
    good = _bank().save(tmp_path / "good.safetensors").read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00\x01not a safetensors file at all" * 3)
    elif damage == "truncated":
        path.write_bytes(good[: len(good) - 40])
    elif damage == "huge header":
        path.write_bytes((10**12).to_bytes(8, "little") + good[8:])
    elif damage == "not a bank":
        from safetensors.torch import save_file

        save_file({"x": torch.zeros(2)}, str(path))
    else:
        path.write_bytes(good.replace(b'"index":"[{', b'"index":"[[', 1))
    with pytest.raises(ValueError, match=r"^bank\.safetensors (is )?" + message):
        ib.IdentityBank.load(path)
