"""Shared helpers of the DiT tests: cached tiny DiT models and a KSampler run on them."""

from __future__ import annotations

import torch

_CACHE: dict = {}


def tiny_dit(family: str):
    """The tiny MODEL of a DiT family, built once per session; never mutate it, clone()."""
    if family not in _CACHE:
        from tiny_models import dit_factory

        _CACHE[family] = dit_factory.tiny_dit(family)
    return _CACHE[family]


def ksample(
    model,
    family: str,
    panels: int = 2,
    h: int = 8,
    w: int = 12,
    steps: int = 3,
    cfg: float = 2.0,
    seed: int = 0,
    positive=None,
    negative=None,
    sampler: str = "euler",
) -> torch.Tensor:
    """Sample `panels` images through core's KSampler node (the node a user's graph runs)."""
    import nodes
    from tiny_models import dit_factory

    positive = positive if positive is not None else dit_factory.conditioning(family, panels, seed=1)
    negative = negative if negative is not None else dit_factory.conditioning(family, panels, seed=2)
    latent = {"samples": dit_factory.empty_latent(family, panels, h, w)}
    (out,) = nodes.KSampler().sample(
        model, seed, steps, cfg, sampler, "simple", positive, negative, latent, denoise=1.0
    )
    return out["samples"]


def clear():
    _CACHE.clear()


# ---- a foreign `dit` block replace and an independent dense reference ------------------------
def raw_block_call(dm, key: tuple, args: dict, topts: dict) -> dict:
    """Run block `key` of the diffusion model itself (as the host's block_wrap does) on copies of args."""
    kind, i = key
    a = {name: (t.clone() if isinstance(t, torch.Tensor) else t) for name, t in args.items()}
    if hasattr(dm, "double_blocks"):  # Flux.1, Flux.2, Chroma
        if kind == "double_block":
            img, txt = dm.double_blocks[i](
                img=a["img"],
                txt=a["txt"],
                vec=a["vec"],
                pe=a["pe"],
                attn_mask=a.get("attn_mask"),
                transformer_options=topts,
            )
            return {"img": img, "txt": txt}
        return {
            "img": dm.single_blocks[i](
                a["img"], vec=a["vec"], pe=a["pe"], attn_mask=a.get("attn_mask"), transformer_options=topts
            )
        }
    if hasattr(dm, "transformer_blocks"):  # Qwen-Image
        txt, img = dm.transformer_blocks[i](
            hidden_states=a["img"],
            encoder_hidden_states=a["txt"],
            encoder_hidden_states_mask=None,
            temb=a["vec"],
            image_rotary_emb=a["pe"],
            transformer_options=topts,
        )
        return {"img": img, "txt": txt}
    txt, img = dm.joint_blocks[i](a["txt"], a["img"], c=a["vec"], transformer_options=topts)  # SD3
    return {"img": img, "txt": txt}


def dense_reference_override(dm, grid, chunks: int, pe, tail: int, rope: bool):
    """An attention override computing, per panel, an explicit softmax over its own whole joint
    sequence plus every other panel's image tokens (same guidance chunk) placed to the right of the
    panel (canvas positions): RoPE undone with the call's own rotations and applied afresh at the
    new positions through the model's embedder. Independent of the pack's gathering and rotation."""
    gh, gw = grid
    img = gh * gw

    def override(func, *args, **kwargs):
        q, k, v = args[:3]
        heads = args[3] if len(args) > 3 else kwargs["heads"]
        skip = kwargs.get("skip_reshape", False)
        b = q.shape[0]
        if not skip:
            q, k, v = (t.reshape(b, t.shape[1], heads, -1).transpose(1, 2) for t in (q, k, v))
        n = q.shape[2]
        start = n - img - tail if n > img else 0
        images = b // chunks
        out = torch.empty(b, n, q.shape[1] * q.shape[3], dtype=torch.float64)
        for row in range(b):
            c, i = divmod(row, images)
            keys, values = [k[row].double()], [v[row].double()]
            for m, j in enumerate(j for j in range(images) if j != i):
                other = c * images + j
                kj = k[other][:, start : start + img].double()
                if rope:
                    rot = pe[0, 0, start : start + img].double()  # [img, D/2, 2, 2] of the panel's own grid
                    pre = torch.einsum("lrba,hlrb->hlra", rot, kj.reshape(*kj.shape[:-1], -1, 2)).reshape(
                        kj.shape
                    )
                    ids = torch.zeros(img, len(dm.pe_embedder.axes_dim))
                    ys, xs = torch.meshgrid(torch.arange(gh), torch.arange(gw), indexing="ij")
                    base_h = ys.flatten().float() - (gh // 2 if hasattr(dm, "transformer_blocks") else 0)
                    base_w = xs.flatten().float() - (gw // 2 if hasattr(dm, "transformer_blocks") else 0)
                    ids[:, 1], ids[:, 2] = base_h, base_w + (m + 1) * gw
                    new = dm.pe_embedder(ids.unsqueeze(0))[0, 0].double()  # [img, D/2, 2, 2]
                    kj = torch.einsum("lrab,hlrb->hlra", new, pre.reshape(*pre.shape[:-1], -1, 2)).reshape(
                        kj.shape
                    )
                keys.append(kj)
                values.append(v[other][:, start : start + img].double())
            kk, vv = torch.cat(keys, 1), torch.cat(values, 1)
            w = (q[row].double() @ kk.transpose(-1, -2)) / q.shape[-1] ** 0.5
            out[row] = (w.softmax(-1) @ vv).transpose(0, 1).reshape(n, -1)
        return out.to(q.dtype)

    return override
