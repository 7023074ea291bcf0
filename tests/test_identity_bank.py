"""The identity bank object: nearest-sigma reads, fp16 CPU storage, .safetensors round trip."""

import pytest
import torch

from pack_loader import pure

ib = pure("attention.identity_bank")
LAYER = ("output", 3, 0)


def _bank():
    bank = ib.IdentityBank()
    for sigma in (14.6, 7.0, 3.0):
        bank.record("Bob", sigma, LAYER, torch.full((6, 8), sigma), half=0)
        bank.record("Bob", sigma, LAYER, torch.full((6, 8), -sigma), half=1)
    bank.record("Ann Lee", 7.0, ("middle", 0, 1), torch.randn(4, 16))
    return bank


def test_contract_characters_and_nearest_sigma():
    bank = _bank()
    assert bank.characters == ["Ann Lee", "Bob"]
    t = bank.tokens("Bob", 6.0, LAYER)
    assert t.shape == (6, 8) and t.dtype == torch.float16 and t.device.type == "cpu"
    assert float(t[0, 0]) == 7.0
    assert float(bank.tokens("Bob", 100.0, LAYER)[0, 0]) == pytest.approx(14.6, abs=0.01)
    assert float(bank.tokens("Bob", 3.0, LAYER, half=1)[0, 0]) == -3.0
    assert bank.tokens("Bob", 3.0, ("output", 4, 0)) is None
    assert bank.tokens("Carl", 3.0, LAYER) is None
    assert bank.sigmas("Bob") == [14.6, 7.0, 3.0]
    assert "Bob" in bank.summary()


def test_save_load_round_trip(tmp_path):
    bank = _bank()
    path = bank.save(tmp_path / (ib.sanitize_name("my story/../bank") + ".safetensors"))
    assert path.parent == tmp_path
    loaded = ib.IdentityBank.load(path)
    assert loaded.characters == bank.characters
    for c in bank.characters:
        assert loaded.sigmas(c) == bank.sigmas(c)
        for layer in bank.layers(c):
            for s in bank.sigmas(c):
                for half in (0, 1):
                    a, b = bank.tokens(c, s, layer, half), loaded.tokens(c, s, layer, half)
                    assert (a is None and b is None) or torch.equal(a, b)


def test_update_from_replaces_only_the_written_characters():
    bank = _bank()
    new = ib.IdentityBank()
    new.record("Bob", 1.0, LAYER, torch.ones(2, 8))
    bank.update_from(new)
    assert bank.sigmas("Bob") == [1.0] and bank.sigmas("Ann Lee") == [7.0]


def test_sanitize_and_bad_files(tmp_path):
    assert ib.sanitize_name("../../etc/passwd") == "etc_passwd"
    assert ib.sanitize_name("  ") == "identity_bank"
    assert ib.sanitize_name("Bob's bank.safetensors") == "Bob_s_bank"
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(ValueError, match="not an identity bank"):
        ib.IdentityBank.load(tmp_path / "other.safetensors")
    with pytest.raises(ValueError):
        ib.IdentityBank().record("Bob", 1.0, LAYER, torch.zeros(2, 3, 4))
