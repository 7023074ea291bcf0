"""Consistent Self-Attention on a Flux-shaped DiT: speed and memory, measured side by side in one run.

A 1024x1024 image on Flux = 4096 image tokens (64x64 after the 2x2 patches) + 512 T5 text tokens;
4 story panels, keep-rate 0.5, canvas positions. Each panel attends to its own 4608 tokens plus
0.5 x 3 x 4096 = 6144 borrowed image tokens, so the FLOP ideal of the attention is
(4608 + 6144) / 4608 = 2.33x the vanilla attention.

1. Joint attention alone (pure torch, [4, heads, 4608, 128]): gathering CSA vs vanilla vs the
   FLOP ideal; peak memory CSA / vanilla.
2. One double + one single block of a Flux-shaped model built by ComfyUI (comfy.supported_models.Flux,
   depth 1 + 1), one model call through the ModelPatcher with the pack's node patch vs unpatched;
   ideal = unpatched + the extra keys' share of its two attention calls (timed in section 1).

3. Position coupling (no weights needed): two panels whose image keys agree up to noise at the same
   grid cells (one character drawn at the same place), Flux RoPE (axes 16/56/56, theta 1e4) on
   unit-variance q/k of head dim 128: how much more attention a query puts on the borrowed token
   at its own grid cell than on an average borrowed token, per position mode. "same" locks
   queries onto the same cell of the other panel (layout copying); "canvas"/"index" leave
   matching to content.

    .venv/bin/python bench/bench_dit.py [--device cuda|cpu] [--heads N] [--repeats N]

Real widths (24 heads x 128 = 3072) on CUDA in bf16; on a CPU 2 heads x 128 (head dim and RoPE
axes real, fewer heads), fp32, one thread. Peak memory: torch.cuda.max_memory_allocated on
CUDA; on a Linux CPU each variant runs once in a fresh process and its VmHWM above the RSS after
the inputs were made is taken.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
IMG, TXT, PANELS, KEEP, GRID = 4096, 512, 4, 0.5, (64, 64)
AXES, THETA = (16, 56, 56), 10000


def pure(name):
    if "storydiffusion_bench" not in sys.modules:
        parent = types.ModuleType("storydiffusion_bench")
        parent.__path__ = [str(ROOT)]
        sys.modules["storydiffusion_bench"] = parent
    return importlib.import_module(f"storydiffusion_bench.{name}")


jc = pure("attention.joint_consistent")
ts = pure("attention.token_sampling")
cs = pure("attention.consistent")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_all(fns: dict, device, repeats) -> dict:
    """Best-of-`repeats` seconds per function, round-robin so a load change hits all alike."""
    for fn in fns.values():
        fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append(time.perf_counter() - t0)
    return {name: min(t) for name, t in times.items()}


def _rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def peak(fn, device, child_args=None):
    if device.type == "cuda":
        sync(device)
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated() - before
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child-mem", *map(str, child_args)]
    return float(
        subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
    )


def sdpa(q, k, v, mask=None):
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention_case(heads, device, dtype):
    g = torch.Generator().manual_seed(0)
    n = TXT + IMG
    q, k, v = (torch.randn(PANELS, heads, n, 128, generator=g).to(device, dtype) for _ in range(3))
    layout = jc.JointLayout(TXT, IMG, GRID)
    idx = ts.sample_token_indices(PANELS, IMG, KEEP, seed=0, sigma=1.0).to(device)
    refs = cs.reference_table(PANELS)
    rots = [
        jc.rope_rotation(d, AXES, THETA).to(device) for d in jc.slot_offsets("canvas", PANELS - 1, GRID, 3)
    ]
    return {
        "vanilla": lambda: sdpa(q, k, v),
        "csa": lambda: jc.joint_consistent_attention(q, k, v, layout, idx, refs, sdpa, rots),
    }


def flux_case(heads, device, dtype):
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_host import host_root

    sys.path.insert(0, str(host_root()))
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = device.type == "cpu"
    import comfy.model_patcher
    import comfy.supported_models

    from pack_loader import submodule

    cfg = {
        "image_model": "flux",
        "in_channels": 16,
        "out_channels": 16,
        "vec_in_dim": 768,
        "context_in_dim": 4096,
        "hidden_size": 128 * heads,
        "mlp_ratio": 4.0,
        "num_heads": heads,
        "depth": 1,
        "depth_single_blocks": 1,
        "axes_dim": list(AXES),
        "theta": THETA,
        "patch_size": 2,
        "qkv_bias": True,
        "guidance_embed": True,
    }
    mc = comfy.supported_models.Flux(cfg)
    mc.set_inference_dtype(dtype, None)
    model = mc.get_model({}, device=device)
    model.diffusion_model.to(device, dtype)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.copy_(
                (
                    torch.randn(p.shape, generator=g) * (max(1, p[0].numel()) ** -0.5 if p.ndim > 1 else 1.0)
                ).to(p)
            )
    plain = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=device)
    node = submodule("nodes.consistent_attention").ConsistentSelfAttention()
    patched = node.patch(
        plain,
        keep_rate_1_8=KEEP,
        keep_rate_1_16=KEEP,
        keep_rate_1_32=KEEP,
        keep_rate_1_64=KEEP,
        blocks="all",
        warmup_steps=0,
        start_percent=0.0,
        end_percent=1.0,
        apply_probability="1",
        window=0,
        seed=0,
        strength=1.0,
        keep_rate_double=KEEP,
        keep_rate_single=KEEP,
        dit_positions="canvas",
    )[0]
    x = torch.randn(PANELS, 16, 128, 128, generator=g).to(device, dtype)
    ctx = torch.randn(PANELS, TXT, 4096, generator=g).to(device, dtype)
    y = torch.randn(PANELS, 768, generator=g).to(device, dtype)
    sigma = torch.full((PANELS,), 0.8, device=device)
    guidance = torch.full((PANELS,), 3.5, device=device)

    def run(m):
        topts = dict(m.model_options["transformer_options"])
        topts.update({"cond_or_uncond": [0], "sigmas": sigma, "sample_sigmas": torch.tensor([1.0, 0.8, 0.0])})
        topts["wrappers"] = m.wrappers  # what a sampler hands the model: the patch's APPLY_MODEL wrapper
        with torch.no_grad():
            return m.model.apply_model(
                x, sigma, c_crossattn=ctx, y=y, guidance=guidance, transformer_options=topts
            )

    import comfy.ldm.modules.attention as comfy_attention

    qa, ka, va = (torch.randn(PANELS, heads, TXT + IMG, 128, generator=g).to(device, dtype) for _ in range(3))

    def host_attention():  # the kernel the host picked for this device (what both model calls use)
        return comfy_attention.optimized_attention(qa, ka, va, heads, skip_reshape=True)

    return {
        "vanilla": lambda: run(plain),
        "csa": lambda: run(patched),
        "host_attention": host_attention,
        "kernel": comfy_attention.optimized_attention.__name__,
    }


def child_main(section, variant, heads, dtype):
    device = torch.device("cpu")
    dtype = getattr(torch, dtype)
    case = (
        attention_case(int(heads), device, dtype)
        if section == "attn"
        else flux_case(int(heads), device, dtype)
    )
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS:")
    case[variant]()
    print((_rss_kib("VmHWM:") - before) * 1024)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child-mem":
        torch.set_num_threads(1)
        child_main(*sys.argv[2:6])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--heads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cpu":
        torch.set_num_threads(1)
    heads = args.heads or (24 if device.type == "cuda" else 2)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    dname = str(dtype).removeprefix("torch.")
    n, extra = TXT + IMG, KEEP * (PANELS - 1) * IMG
    ideal = (n + extra) / n
    print(
        f"Flux-shaped, 1024x1024: {IMG} image + {TXT} text tokens, {PANELS} panels, keep-rate {KEEP}, "
        f"{heads} heads x 128 ({device.type}, {dname})"
    )

    print("\n== 1. joint attention ==")
    case = attention_case(heads, device, dtype)
    t = timed_all(case, device, args.repeats)
    mem = {v: peak(case[v], device, ("attn", v, heads, dname)) for v in ("vanilla", "csa")}
    van, ours, mib = t["vanilla"], t["csa"], {k: v / 2**20 for k, v in mem.items()}
    print(f"  vanilla {van * 1e3:.1f} ms, CSA {ours * 1e3:.1f} ms, FLOP ideal {van * ideal * 1e3:.1f} ms")
    print(
        f"  CSA/vanilla {ours / van:.2f}x (ideal {ideal:.2f}x), CSA/ideal {ours / van / ideal:.2f}x; "
        f"peak memory CSA/vanilla {mib['csa'] / mib['vanilla']:.2f}x "
        f"({mib['csa']:.0f} vs {mib['vanilla']:.0f} MiB)"
    )
    floor = PANELS * heads * (n + extra) * 128 * 2 * torch.finfo(dtype).bits // 8
    print(
        f"  (the extended keys + values alone: {floor / 2**20:.0f} MiB; a dense (B*L)^2 mask: "
        f"{(PANELS * n) ** 2 * 4 / 2**20:.0f} MiB per head in fp32)"
    )
    del case

    print("\n== 2. one double + one single Flux block (a whole model call through the ModelPatcher) ==")
    case = flux_case(heads, device, dtype)
    t = timed_all({k: case[k] for k in ("vanilla", "csa", "host_attention")}, device, args.repeats)
    mem = {v: peak(case[v], device, ("flux", v, heads, dname)) for v in ("vanilla", "csa")}
    block_ideal = t["vanilla"] + 2 * t["host_attention"] * (ideal - 1)
    van, ours, kernel = t["vanilla"], t["csa"], t["host_attention"]
    print(f"  host attention kernel: {case['kernel']}, {kernel * 1e3:.1f} ms per vanilla joint call")
    print(f"  unpatched {van * 1e3:.1f} ms, CSA {ours * 1e3:.1f} ms, FLOP ideal {block_ideal * 1e3:.1f} ms")
    print(
        f"  CSA/unpatched {ours / van:.2f}x (ideal {block_ideal / van:.2f}x), "
        f"CSA/ideal {ours / block_ideal:.2f}x; "
        f"peak memory CSA/unpatched {mem['csa'] / mem['vanilla']:.2f}x "
        f"({mem['csa'] / 2**20:.0f} vs {mem['vanilla'] / 2**20:.0f} MiB)"
    )
    section_positions()
    return 0


def rope_tokens(x, ids):
    """Flux RoPE written out for x [L, D] at positions ids [L, 3] (complex multiplication)."""
    angles = [
        ids[:, a : a + 1].double() * THETA ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        for a, d in enumerate(AXES)
    ]
    ang = torch.cat(angles, 1)
    xc = torch.view_as_complex(x.double().reshape(x.shape[0], -1, 2).contiguous())
    return torch.view_as_real(xc * torch.polar(torch.ones_like(ang), ang)).reshape(x.shape)


def section_positions(side=32, trials=3):
    """Locality through RoPE: q and k share a position-free component c (as trained attention has:
    a query scores a key of the same content higher), so a key at relative offset 0 gets the
    largest score. A borrowed token at the *same* cell therefore gets the bonus of the query's own
    cell; at canvas/index positions it is scored like a distant token."""
    print(f"\n== 3. position coupling: 2 panels, {side}x{side} tokens, q = c + noise, k = c + noise ==")
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    grid = torch.stack([torch.zeros(side * side), ys.flatten().float(), xs.flatten().float()], 1)
    print(
        "  attention on the borrowed token at the query's own cell / on an average borrowed token"
        " (own-image analogue in brackets)"
    )
    print(f"  {'share c':>7} | " + " ".join(f"{m:>16}" for m in jc.POSITION_MODES))
    n = side * side
    for share in (0.25, 0.5, 0.75):
        row = []
        for mode in jc.POSITION_MODES:
            locked, own = [], []
            for t in range(trials):
                g = torch.Generator().manual_seed(t)
                c = torch.randn(128, generator=g)

                q, k_own, k_other = (
                    share**0.5 * c + (1 - share) ** 0.5 * torch.randn(n, 128, generator=g) for _ in range(3)
                )
                d = torch.tensor(jc.slot_offsets(mode, 1, (side, side), 3)[0])
                w = (
                    rope_tokens(q, grid)
                    @ torch.cat([rope_tokens(k_own, grid), rope_tokens(k_other, grid + d)]).T
                    / 128**0.5
                ).softmax(-1)
                wo, wb = w[:, :n], w[:, n:]
                locked.append(float((wb.diagonal() / wb.mean(1)).mean()))
                own.append(float((wo.diagonal() / wo.mean(1)).mean()))
            row.append(f"{sum(locked) / trials:>6.1f}x ({sum(own) / trials:>5.1f}x)")
        print(f"  {share:>7} | " + " ".join(f"{r:>16}" for r in row))


if __name__ == "__main__":
    sys.exit(main())
