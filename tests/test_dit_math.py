"""Pure joint-attention CSA math for DiTs: gathering vs an explicit per-panel softmax, RoPE shifts."""

import math

import pytest
import torch

from pack_loader import pure

jc = pure("attention.joint_consistent")
ts = pure("attention.token_sampling")
cs = pure("attention.consistent")


def sdpa(q, k, v, mask=None):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def explicit_attention(q, k, v):
    """softmax(q k^T / sqrt(d)) v for one panel, written out: q [H, Lq, D], k, v [H, Lk, D]."""
    w = (q.double() @ k.double().transpose(-1, -2)) / math.sqrt(q.shape[-1])
    return (w.softmax(-1) @ v.double()).float()


def rope_at(x, ids, axes_dim, theta):
    """RoPE written from scratch: x [H, L, D] at positions ids [L, axes] (complex multiplication)."""
    angles = []
    for a, dim in enumerate(axes_dim):
        freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64) / dim)
        angles.append(ids[:, a : a + 1].double() * freq)
    ang = torch.cat(angles, 1)  # [L, D/2]
    xc = torch.view_as_complex(x.double().reshape(*x.shape[:-1], -1, 2).contiguous())
    return torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)).reshape(x.shape).float()


def grid_ids(h, w, txt, axes=3):
    ids = torch.zeros(txt + h * w, axes)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    ids[txt:, 1], ids[txt:, 2] = ys.flatten().float(), xs.flatten().float()
    return ids


AXES, THETA = (4, 6, 6), 10000.0  # head dim 16, the Flux split scaled down


def make_panels(b=4, heads=2, txt=5, h=3, w=4, tail=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    n = txt + h * w + tail
    q0, k0, v = (torch.randn(b, heads, n, sum(AXES), generator=g) for _ in range(3))
    ids = grid_ids(h, w, txt)
    ids = torch.cat([ids, torch.full((tail, 3), 7.0)], 0)  # tail tokens (e.g. a reference latent) elsewhere
    q = torch.stack([rope_at(q0[i], ids, AXES, THETA) for i in range(b)])
    k = torch.stack([rope_at(k0[i], ids, AXES, THETA) for i in range(b)])
    return q0, k0, q, k, v, ids, jc.JointLayout(txt, h * w, (h, w))


@pytest.mark.parametrize("mode", ["canvas", "index", "same"])
def test_keep_rate_one_equals_explicit_dense_joint_attention_with_fresh_positions(mode):
    """Borrowed keys rotated after RoPE == RoPE computed from scratch at the chosen positions."""
    b, txt, h, w = 4, 5, 3, 4
    q0, k0, q, k, v, ids, layout = make_panels(b=b, txt=txt, h=h, w=w)
    indices = ts.sample_token_indices(b, h * w, 1.0, seed=1, sigma=1.0)
    refs = cs.reference_table(b)
    offsets = jc.slot_offsets(mode, b - 1, (h, w), 3, index_scale=1.0)
    rots = [jc.rope_rotation(d, AXES, THETA) for d in offsets]
    out = jc.joint_consistent_attention(q, k, v, layout, indices, refs, sdpa, rots)
    for i in range(b):
        keys, values = [k[i]], [v[i]]
        for m, j in enumerate(refs[i]):
            img = slice(txt, txt + h * w)
            moved = ids[img] + torch.tensor(offsets[m])
            keys.append(rope_at(k0[j][:, img], moved, AXES, THETA))  # positions from scratch
            values.append(v[j][:, img])
        ref = explicit_attention(q[i], torch.cat(keys, 1), torch.cat(values, 1))
        assert torch.allclose(out[i], ref, atol=1e-5), (mode, i, (out[i] - ref).abs().max())


def test_sampled_tokens_and_window_match_explicit_reference():
    b, txt, h, w = 5, 3, 4, 4
    _, _, q, k, v, _, layout = make_panels(b=b, txt=txt, h=h, w=w, tail=0, seed=2)
    indices = ts.sample_token_indices(b, h * w, 0.5, seed=3, sigma=0.7)
    refs = cs.reference_table(b, window=3)
    rots = [jc.rope_rotation(d, AXES, THETA) for d in jc.slot_offsets("canvas", 2, (h, w), 3)]
    out = jc.joint_consistent_attention(q, k, v, layout, indices, refs, sdpa, rots)
    for i in range(b):
        keys, values = [k[i]], [v[i]]
        for m, j in enumerate(refs[i]):
            sel = txt + indices[j]
            keys.append(jc.rotate_pairs(k[j][:, sel], rots[m]))
            values.append(v[j][:, sel])
        assert torch.allclose(
            out[i], explicit_attention(q[i], torch.cat(keys, 1), torch.cat(values, 1)), atol=1e-5
        )


def test_keep_rate_zero_or_one_panel_is_the_plain_call_bit_for_bit():
    _, _, q, k, v, _, layout = make_panels(b=3)
    plain = sdpa(q, k, v)
    none = ts.sample_token_indices(3, layout.img_len, 0.0, 0, 1.0)
    assert torch.equal(
        jc.joint_consistent_attention(q, k, v, layout, none, cs.reference_table(3), sdpa), plain
    )
    one = ts.sample_token_indices(1, layout.img_len, 0.5, 0, 1.0)
    assert torch.equal(
        jc.joint_consistent_attention(q[:1], k[:1], v[:1], layout, one, [()], sdpa), sdpa(q[:1], k[:1], v[:1])
    )


def test_text_and_tail_tokens_are_never_shared():
    b, txt, h, w, tail = 3, 4, 2, 3, 2
    _, _, q, k, v, _, layout = make_panels(b=b, txt=txt, h=h, w=w, tail=tail)
    indices = ts.sample_token_indices(b, h * w, 1.0, 0, 1.0)
    refs = cs.reference_table(b)
    out = jc.joint_consistent_attention(q, k, v, layout, indices, refs, sdpa)
    k2, v2 = k.clone(), v.clone()
    for j in (1, 2):  # change panels 1 and 2 everywhere except their image tokens
        k2[j, :, :txt] += 5
        v2[j, :, :txt] -= 3
        k2[j, :, txt + h * w :] *= 4
    out2 = jc.joint_consistent_attention(q, k2, v2, layout, indices, refs, sdpa)
    assert torch.equal(out[0], out2[0])
    k3 = k.clone()
    k3[1, :, txt] += 1  # an image token of panel 1 is shared: panel 0 must change
    assert not torch.allclose(jc.joint_consistent_attention(q, k3, v, layout, indices, refs, sdpa)[0], out[0])


def test_bank_tokens_and_masks_extend_each_row():
    b, txt, h, w = 3, 2, 2, 2
    _, _, q, k, v, _, layout = make_panels(b=b, txt=txt, h=h, w=w, tail=0)
    heads, d = q.shape[1], q.shape[-1]
    ek, ev = torch.randn(heads, 3, d), torch.randn(heads, 3, d)
    extra = [(ek, ev, "Bob"), None, (ek, ev, "Bob")]
    none = torch.zeros(b, 0, dtype=torch.long)
    n = k.shape[2]
    mask = torch.zeros(b, 1, n, n)
    mask[:, :, :txt, txt:] = -1e9  # text must not see the image
    out = jc.joint_consistent_attention(q, k, v, layout, none, [()] * b, sdpa, row_extra=extra, mask=mask)
    for i in range(b):
        kk, vv, mm = k[i], v[i], mask[i]
        if extra[i] is not None:
            kk, vv = torch.cat([kk, ek], 1), torch.cat([vv, ev], 1)
            mm = torch.cat([mm, torch.zeros(1, n, 3)], -1)
        assert torch.allclose(out[i], sdpa(q[i : i + 1], kk[None], vv[None], mm[None])[0], atol=1e-6)
    bmask = torch.ones(n, n, dtype=torch.bool)
    assert jc.extend_mask(bmask, [0], b, 2).shape == (n, n + 2) and bool(
        jc.extend_mask(bmask, [0], b, 2)[:, -2:].all()
    )


def test_rope_rotation_composes_and_slot_offsets():
    x = torch.randn(2, 5, 16)
    r1, r2 = jc.rope_rotation((1, 2, 3), AXES, THETA), jc.rope_rotation((0.5, -1, 4), AXES, THETA)
    both = jc.rope_rotation((1.5, 1, 7), AXES, THETA)
    assert torch.allclose(jc.rotate_pairs(jc.rotate_pairs(x, r1), r2), jc.rotate_pairs(x, both), atol=1e-5)
    assert jc.slot_offsets("canvas", 2, (3, 4), 3) == [(0.0, 0.0, 4.0), (0.0, 0.0, 8.0)]
    assert jc.slot_offsets("index", 2, (3, 4), 4, index_scale=10) == [
        (10.0, 0.0, 0.0, 0.0),
        (20.0, 0.0, 0.0, 0.0),
    ]
    assert jc.slot_offsets("same", 1, (3, 4), 3) == [(0.0, 0.0, 0.0)]
    with pytest.raises(ValueError):
        jc.slot_offsets("matched", 1, (3, 4), 3)


def test_dit_bank_write_records_the_tokens_the_bank_settings_choose():
    """A DiT write run stores the token positions of the bank's settings (its keep-rate; with
    'interpolate' the same positions at every step), as on UNets, not CSA's draw of the step."""
    ib, bs = pure("attention.identity_bank"), pure("attention.bank_storage")
    cr = pure("attention.consistent_run")
    settings = bs.BankSettings(steps=0, keep_rate=0.25, precision="fp16", between="interpolate")
    mode = cr.Mode(kind="write", bank=ib.IdentityBank(settings=settings), labels=("Bob",))
    run = cr.ConsistentRun(cr.ConsistentConfig(keep_double=0.5, warmup_steps=0), mode)
    layout, images, heads = jc.JointLayout(2, 16, (4, 4)), 2, 1
    L = layout.img_start + layout.img_len
    k = torch.arange(L, dtype=torch.float32).view(1, 1, L, 1).expand(images, heads, L, 2).contiguous()
    sigmas = [3.0, 1.5, 0.0]
    gather = jc.JointGather(layout, lambda q_, k_, v_, m_: q_, lambda slots: [None] * slots)
    for sigma in sigmas[:2]:
        call = cr.Call(("double", 0, 0), images, layout.img_len, (0,), sigma, sigmas, rate=0.5)
        run.record(run.plan(call), layout.img_len, gather.take(k, k))
    want = settings.positions(images, layout.img_len, 0.5, 0, 0.0) + layout.img_start
    for sigma in sigmas[:2]:
        got = run.staging.tokens("Bob", sigma, ("double", 0, 0))[:, 0].long()
        assert got.tolist() == want.flatten().tolist()
