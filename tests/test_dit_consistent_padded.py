"""Consistent Self-Attention on a Qwen-Image batch of panels whose prompts have different lengths.

The Story Prompt zero-pads the panels' contexts to the longest (18, 23, 28 tokens here) with a text
attention mask, which a host that passes the mask (ComfyUI 0.33.0) turns into an additive key mask
of every joint attention call. Sharing appends other panels' image tokens after the sequence: the
appended keys must be image keys only (never text, padded or not) and the mask must still keep
every row from its panel's padding.
"""

import torch

from dit_helpers import ksample, tiny_dit
from test_dit_isolated_qwen import LENGTHS, host_masks_text, qwen_story
from test_dit_sampling import ALWAYS, csa

GRID = (4, 6)  # image tokens of an 8x12 latent (patch 2)
SHARE_ALL = {**ALWAYS, "keep_rate_double": 1.0, "keep_rate_single": 1.0, "dit_positions": "same"}


class Probe:
    """Records every attention call (q, k, v, mask, guidance chunks), then runs the kernel."""

    def __init__(self):
        self.calls = []

    def __deepcopy__(self, memo):  # clone() deep-copies model_options: keep one recorder
        return self

    def install(self, model):
        m = model.clone()
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = self
        return m

    def __call__(self, func, *args, **kwargs):
        topts = kwargs.get("transformer_options") or {}
        q, k, v = args[:3]
        mask = args[4] if len(args) > 4 else kwargs.get("mask")
        chunks = [int(c) for c in topts.get("cond_or_uncond") or [0]]
        self.calls.append((q.detach().clone(), k.detach().clone(), mask, chunks))
        return func(*args, **kwargs)


def sample(model, steps=2):
    clip, pos, neg, story, n = qwen_story()
    return ksample(model, "qwen_image", panels=n, positive=pos, negative=neg, steps=steps)


def as_4d(mask):
    """A kernel's mask as the host's attention broadcasts it: [B, H or 1, Lq or 1, Lk]."""
    if mask is None:
        return None
    return mask[None, None] if mask.ndim == 2 else mask.unsqueeze(1) if mask.ndim == 3 else mask


def test_strength_zero_and_keep_rate_zero_are_bit_identical_on_a_padded_batch():
    _, pos, _, _, _ = qwen_story()
    assert pos[0][1]["attention_mask"].sum(1).tolist() == LENGTHS
    model = tiny_dit("qwen_image")
    plain = sample(model)
    assert torch.equal(sample(csa(model, strength=0.0, **SHARE_ALL)), plain)
    assert torch.equal(sample(csa(model, **{**SHARE_ALL, "keep_rate_double": 0.0})), plain)
    assert not torch.allclose(sample(csa(model, **SHARE_ALL)), plain, atol=1e-4), "sharing changed nothing"


def test_appended_keys_are_other_panels_image_keys_and_padding_gets_no_weight():
    probe = Probe()
    sample(csa(probe.install(tiny_dit("qwen_image")), **SHARE_ALL))
    n, T = GRID[0] * GRID[1], max(LENGTHS)
    masked = host_masks_text()
    shared = weighed = 0
    for q, k, mask, chunks in probe.calls:
        L, B = q.shape[2], q.shape[0]
        text = L - n  # [text | image]
        assert text == T or 0 not in chunks  # the story's rows: padded to the longest panel
        images = B // len(chunks)
        if k.shape[2] > L:  # keys appended: every other panel's image tokens (keep rate 1), text never
            assert k.shape[2] == L + (images - 1) * n
            for r in range(B):
                c, p = divmod(r, images)
                extra = k[r, :, L:]
                for m, other in enumerate(j for j in range(images) if j != p):
                    got = extra[:, m * n : (m + 1) * n]
                    assert torch.equal(got, k[c * images + other, :, text:L]), (r, m)  # its image keys
                texts = (
                    k[c * images : (c + 1) * images, :, :text]
                    .transpose(0, 1)
                    .reshape(k.shape[1], -1, k.shape[3])
                )
                same = (extra[:, :, None] == texts[:, None]).all(-1).any(-1)  # [H, appended]
                assert not bool(same.any()), (r, "an appended key is a text key")
            shared += 1
        if not masked or 0 not in chunks:
            continue
        assert mask is not None, "the host's text mask was dropped"
        logits = (q.double() @ k.double().transpose(-1, -2)) * q.shape[-1] ** -0.5
        w = (logits + as_4d(mask).double()).softmax(-1)  # [B, H, L, Lk]
        for r in range(B):
            c, p = divmod(r, images)
            if chunks[c] == 0:  # the story's rows: no row weighs its panel's prompt padding
                assert w[r, ..., LENGTHS[p] : T].abs().sum() == 0, (r, "padding weighed")
                assert w[r, ..., : LENGTHS[p]].sum(-1).min() > 0
        weighed += 1
    assert shared > 0 and (weighed > 0 or not masked)
