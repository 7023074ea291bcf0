"""The joint-attention isolation masks (attention/joint_isolated.py) against attention written
directly on the sub-sequences each row is meant to see."""

import pytest
import torch
import torch.nn.functional as F

from pack_loader import pure

ji = pure("attention.joint_isolated")

T, S0, S1, N, H, D = 5, 3, 4, 6, 2, 8
SEG = ji.Segments(T, (S0, S1, 2), (0, 1, ji.SCENE))
L = SEG.text + N


def qkv(seed=0, extra=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, H, n, D, generator=g, dtype=torch.float64) for n in (L, L + extra, L + extra)]


def sdpa(q, k, v, bias=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def cols(*parts):
    return torch.cat([torch.arange(p.start, p.stop) if isinstance(p, slice) else p for p in parts])


def test_base_mask_keeps_the_original_sequence_and_segments_alone():
    q, k, v = qkv()
    out = sdpa(q, k, v, ji.base_bias(SEG, L, torch.float64))
    img = slice(SEG.text, L)
    orig = cols(slice(0, T), img)  # the unextended sequence [prompt | image]
    plain = sdpa(q[:, :, orig], k[:, :, orig], v[:, :, orig])
    assert torch.allclose(out[:, :, orig], plain, atol=1e-12)
    for s in range(3):
        own = cols(SEG.span(s), img)
        alone = sdpa(q[:, :, SEG.span(s)], k[:, :, own], v[:, :, own])
        assert torch.allclose(out[:, :, SEG.span(s)], alone, atol=1e-12)


def test_isolated_mask_rows_see_own_prompt_image_and_own_references():
    R = 5
    q, k, v = qkv(1, R)
    region = torch.zeros(2, N, dtype=torch.bool)
    region[0, :2], region[1, 3:5] = True, True  # token 2 and 5: background
    owner = torch.tensor([0, 0, 1, 1, 1])
    act = torch.tensor([0.5, 1.0, 0.0, 0.25, 1.0], dtype=torch.float64)
    gamma = 2.0
    bias = ji.isolated_bias(SEG, L, SEG.text, region, owner, act, gamma, torch.float64)
    out = sdpa(q, k, v, bias)
    img = slice(SEG.text, L)
    boost = torch.log1p(gamma * act)
    for c in (0, 1):
        refs = (owner == c).nonzero().flatten() + L
        keys = cols(SEG.of(c), img, refs)
        extra = torch.zeros(len(keys), dtype=torch.float64)
        extra[-len(refs) :] = boost[owner == c]
        rows = region[c].nonzero().flatten() + SEG.text
        want = sdpa(q[:, :, rows], k[:, :, keys], v[:, :, keys], extra.expand(len(rows), -1))
        assert torch.allclose(out[:, :, rows], want, atol=1e-12)
    rows = (~region.any(0)).nonzero().flatten() + SEG.text
    keys = cols(SEG.of(ji.SCENE), img)  # background: the scene prompt and the image, no reference
    assert torch.allclose(out[:, :, rows], sdpa(q[:, :, rows], k[:, :, keys], v[:, :, keys]), atol=1e-12)
    # text rows are the original branch's
    assert torch.equal(bias[: SEG.text, :L], ji.base_bias(SEG, L, torch.float64)[: SEG.text])


def test_text_probabilities_are_the_softmax_over_allowed_columns():
    q, k, _ = qkv(2)
    base = ji.base_bias(SEG, L, torch.float64)
    rows = slice(SEG.text, L)
    got = ji.text_probabilities(q[0], k[0], base, rows, T)
    orig = cols(slice(0, T), rows)
    w = (q[0, :, rows] @ k[0, :, orig].transpose(-1, -2) / D**0.5).softmax(-1)[..., :T].mean(0)
    assert torch.allclose(got.double(), w, atol=1e-6)


def test_padded_segment_columns_are_hidden_from_their_panel():
    """A segment zero-padded per panel (Qwen-Image's regional prompts): with `padding` masked out,
    its valid rows attend exactly [own valid tokens | image], and the image never sees it."""
    seg = ji.Segments(T, (S0, S1, 2), (0, 1, ji.SCENE), ((2, 3), None, None))  # segment 0: 2 | 3 valid
    pad = ji.padding(seg, 2, L)
    assert pad.tolist()[0][T + 2] and pad.sum() == 1  # panel 0: its last column; panel 1: none
    assert ji.padding(SEG, 2, L) is None
    q, k, v = qkv(3)
    img = slice(SEG.text, L)
    blocked = pure("attention.isolated_self").blocked_value(torch.float64)
    for p, used in ((0, 2), (1, 3)):
        bias = ji.base_bias(seg, L, torch.float64).masked_fill(pad[p], blocked)
        out = sdpa(q, k, v, bias)
        rows = slice(T, T + used)
        keys = cols(rows, img)
        assert torch.allclose(out[:, :, rows], sdpa(q[:, :, rows], k[:, :, keys], v[:, :, keys]), atol=1e-12)
        orig = cols(slice(0, T), img)
        plain = sdpa(q[:, :, orig], k[:, :, orig], v[:, :, orig])
        assert torch.allclose(out[:, :, orig], plain, atol=1e-12)


def test_text_padding_masks_are_read_extended_and_kept():
    """A right-padded text mask gives each row's real length (any other mask: None); extended over
    segments it keeps their tokens and masks their per-panel padding; added to a branch's mask, the
    padded columns get no weight while the rest of the row is unchanged."""
    ones = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    assert ji.text_lengths(ones) == [3, 5]
    assert ji.text_lengths(ones.bool()) == [3, 5]
    assert ji.text_lengths((ones - 1).float() * torch.finfo(torch.float32).max) == [3, 5]
    assert ji.text_lengths(torch.tensor([[1, 0, 1, 0, 0]])) is None  # a hole: not padding
    assert ji.text_lengths(torch.tensor([[0, 0, 1, 1, 1]])) is None  # left padding
    assert ji.text_lengths(torch.tensor([[0.0, -0.5, 0.0]])) is None  # a soft bias
    assert ji.text_lengths(torch.ones(2, 4, 5)) is None  # not [B, T]
    seg = ji.Segments(5, (4, 2), (0, 1), ((4, 2), None))
    ext = ji.extend_text_mask(ones, seg, 2)
    assert ext.tolist() == [[1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0, 0, 1, 1]]
    floats = ji.extend_text_mask((ones - 1).float() * 1e38, seg, 2)
    assert torch.equal(floats == 0, ext.bool())
    q, k, v = (torch.randn(2, H, seg.text + N, D, dtype=torch.float64) for _ in range(3))
    base = ji.base_bias(seg, seg.text + N, torch.float64)[None, None]
    host = (ji.extend_text_mask(ones, seg, 2) - 1).double() * torch.finfo(torch.float64).max
    bias = ji.with_key_mask(base, host[:, None])  # the host's [B, 1, Lk]
    assert torch.isfinite(bias).all()
    w = ((q @ k.transpose(-1, -2)) * D**-0.5 + bias).softmax(-1)
    assert w[0, ..., 3:5].abs().sum() == 0 and w[1, ..., 7:9].abs().sum() == 0
    ref = ((q[1:] @ k[1:].transpose(-1, -2)) * D**-0.5 + base).softmax(-1)
    kept = torch.ones(seg.text + N, dtype=torch.bool)
    kept[7:9] = False
    assert torch.allclose(ref[..., kept] / ref[..., kept].sum(-1, keepdim=True), w[1:][..., kept])


def test_selection_of_padded_contexts_selects_real_tokens_only():
    cm = pure("attention.cross_maps")
    positions = [[[0], [2]], [[1], []]]
    padded = cm.selection_matrix(positions, [3, 6], 12, period=6)  # padded to 6, tiled twice
    assert padded[0, :, 0].nonzero().flatten().tolist() == [0, 6]  # not 3, 9: padding of panel 0
    assert padded[0, :, 1].nonzero().flatten().tolist() == [2, 8]
    assert padded[1, :, 0].nonzero().flatten().tolist() == [1, 7] and not padded[1, :, 1].any()
    tiled = cm.selection_matrix(positions, [3, 6], 12)
    assert tiled[0, :, 0].nonzero().flatten().tolist() == [0, 3, 6, 9]
    with pytest.raises(ValueError):  # a context that is no copy of the padded ones
        cm.selection_matrix(positions, [3, 6], 9, period=6)
