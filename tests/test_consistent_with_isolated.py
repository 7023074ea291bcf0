"""The two attention features together, as users combine them.

* An identity bank written by the Consistent Self-Attention nodes feeds Isolated Attention's
  references (the real IdentityBank, not a stand-in).
* Isolated Attention stacked on a Consistent Self-Attention model: λ = 0 leaves the CSA model
  as it is, and the stacked patch runs and changes the result.
"""

import pytest
import torch

from consistent_inputs import CSA_DEFAULTS
from isolated_helpers import encode_story, isolated, sample
from pack_loader import pure, submodule

bank_nodes = submodule("nodes.identity_bank_nodes")
ca = submodule("nodes.consistent_attention")
parse_story = pure("story.syntax").parse_story

CSA = dict(CSA_DEFAULTS, warmup_steps=0, end_percent=100.0, apply_probability="1")
IDENTITY = (
    "[Bob]: a man with short black hair, red jacket\n[Alice]: a woman with long silver hair, green dress\n"
    "[Bob] portrait\n[Alice] portrait"
)


def csa(model):
    return ca.ConsistentSelfAttention().patch(model, **CSA)[0]


@pytest.fixture(scope="module")
def setup(tiny):
    model, clip, _ = tiny("sd15")
    pos, neg, story, panels = encode_story(clip)
    return model, clip, pos, neg, story, panels


@pytest.fixture(scope="module")
def bank(setup):
    model, clip, *_ = setup
    id_pos, id_neg, id_story, n = encode_story(clip, IDENTITY)
    writer, out_bank = bank_nodes.IdentityBankWritePatch().patch(
        csa(model), story=id_story, names="", bank=None
    )
    sample(writer, id_pos, id_neg, n, steps=4)
    return out_bank


def test_bank_written_by_csa_feeds_isolated_attention(setup, bank):
    model, clip, pos, neg, story, panels = setup
    assert sorted(bank.characters) == ["Alice", "Bob"]
    without = sample(isolated(model, clip, story), pos, neg, panels)
    with_bank = sample(isolated(model, clip, story, identity_bank=bank), pos, neg, panels)
    assert torch.isfinite(with_bank).all()
    assert not torch.equal(with_bank, without)  # the bank's tokens replaced the first-panel references
    again = sample(isolated(model, clip, story, identity_bank=bank), pos, neg, panels)
    assert torch.equal(with_bank, again)


def test_isolation_stacked_on_csa(setup):
    model, clip, pos, neg, story, panels = setup
    csa_model = csa(model)
    csa_only = sample(csa_model, pos, neg, panels)
    assert isolated(csa_model, clip, story, strength=0.0) is csa_model
    stacked = sample(isolated(csa_model, clip, story), pos, neg, panels)
    assert torch.isfinite(stacked).all()
    assert not torch.equal(stacked, csa_only)
    # and the other order: CSA on top of an isolated model
    other = sample(csa(isolated(model, clip, story)), pos, neg, panels)
    assert torch.isfinite(other).all()
