"""The joint-attention isolation masks (attention/joint_isolated.py) against attention written
directly on the sub-sequences each row is meant to see."""

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
