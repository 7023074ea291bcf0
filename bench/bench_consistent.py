"""Consistent self-attention: speed and memory, measured side by side in one run.

1. SDXL-shaped attention inputs of a 1024x1024 image (4096 tokens: 640 ch / 10 heads; 1024 tokens:
   1280 ch / 20 heads), 4 story images, keep-rate 0.5: our gathering CSA vs vanilla self-attention
   (each image alone) vs the naive dense-masked formulation (all B*N tokens, (B*N)^2 mask).
   Ideal CSA time = vanilla x (1 + r(B-1)) = 2.5x (extra keys); target <= 1.15x that (2.9x),
   >= 1.4x faster than dense-masked at <= half its peak memory.
2. CSA time per image from 4 to 32 story images with a window of 4 (target: flat within 15 %).
3. Whole-sampling overhead of the Consistent Self-Attention node on the tiny SDXL-shaped model
   (patched vs unpatched comfy.sample.sample, same seed; CPU).

    .venv/bin/python bench/bench_consistent.py [--device cuda|cpu] [--width-scale 0.25] [--skip-sampling]

On a CPU the attention widths are scaled down by --width-scale (default 0.25 on CPU, 1 on CUDA);
the script prints what it used. Peak memory: torch.cuda.max_memory_allocated on CUDA; on a Linux CPU
each formulation runs once in a fresh process and its VmHWM above the RSS with the inputs made
is taken (reset through /proc/self/clear_refs).
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


def pure(name):
    if "storydiffusion_bench" not in sys.modules:
        parent = types.ModuleType("storydiffusion_bench")
        parent.__path__ = [str(ROOT)]
        sys.modules["storydiffusion_bench"] = parent
    return importlib.import_module(f"storydiffusion_bench.{name}")


cs = pure("attention.consistent")
ts = pure("attention.token_sampling")
reference = pure("tests.reference_attention")  # the naive dense-masked formulation


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_all(fns: dict, device, repeats) -> dict:
    """Best-of-`repeats` seconds per function, run round-robin so a load change hits all alike
    (the minimum is the least disturbed run on a shared machine)."""
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
    return {name: min(ts_) for name, ts_ in times.items()}


def _rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def peak_bytes(fn, device):
    """CUDA: peak allocated during the call above what was allocated before (inputs excluded)."""
    sync(device)
    torch.cuda.empty_cache()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated() - before


def child_peak(variant, tokens, channels, heads, images, keep):
    """CPU: run one formulation once in a fresh process (so no freed heap is reused) and return
    its resident-memory high-water mark above the process after the inputs were made."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child-mem",
        variant,
        str(tokens),
        str(channels),
        str(heads),
        str(images),
        str(keep),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    return float(out[-1])


def child_main(variant, tokens, channels, heads, images, keep):
    case = attention_case(
        int(tokens),
        int(channels),
        int(heads),
        int(images),
        float(keep),
        torch.device("cpu"),
        torch.float32,
        1,
    )
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    before = _rss_kib("VmRSS:")
    case[variant]()
    print((_rss_kib("VmHWM:") - before) * 1024)


def attention_case(tokens, channels, heads, images, keep, device, dtype, repeats, window=0):
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(images, tokens, channels, generator=g).to(device, dtype) for _ in range(3))
    idx = ts.sample_token_indices(images, tokens, keep, seed=0, sigma=1.0).to(device)
    refs = cs.reference_table(images, window)

    def vanilla():
        return cs.sdpa(q, k, v, heads)

    def ours():
        return cs.consistent_attention(q, k, v, heads, idx, refs)

    def dense():  # the mask is part of that formulation: built per call, as a step would
        return reference.dense_masked_attention(q, k, v, heads, idx, refs)

    return {"q": q, "vanilla": vanilla, "ours": ours, "dense": dense}


def section_attention(device, dtype, scale, repeats):
    print(
        f"\n== 1. attention, 4 story images, keep-rate 0.5 ({device.type}, "
        f"{str(dtype).removeprefix('torch.')}, "
        f"width x{scale:g}) =="
    )
    print(
        f"{'tokens':>6} {'ch':>5} {'heads':>5} | {'vanilla ms':>10} {'CSA ms':>8} {'dense ms':>9} | "
        f"{'CSA/van':>7} {'ideal':>5} {'CSA/ideal':>9} {'dense/CSA':>9} | {'CSA MiB':>8} {'dense MiB':>9} "
        f"{'mem CSA/dense':>13}"
    )
    for tokens, channels, heads in ((4096, 640, 10), (1024, 1280, 20)):
        ch, hd = max(64, int(channels * scale)), max(1, int(heads * scale))
        case = attention_case(tokens, ch, hd, 4, 0.5, device, dtype, repeats)
        out_ours, out_dense = case["ours"](), case["dense"]()
        err = (out_ours.float() - out_dense.float()).abs().max().item()
        del out_ours, out_dense
        t = timed_all({name: case[name] for name in ("vanilla", "ours", "dense")}, device, repeats)
        if device.type == "cuda":
            mem = {name: peak_bytes(case[name], device) for name in ("ours", "dense")}
        else:
            mem = {name: child_peak(name, tokens, ch, hd, 4, 0.5) for name in ("ours", "dense")}
        ideal = 1 + 0.5 * 3
        print(
            f"{tokens:>6} {ch:>5} {hd:>5} | {t['vanilla'] * 1e3:>10.2f} {t['ours'] * 1e3:>8.2f} "
            f"{t['dense'] * 1e3:>9.2f} | "
            f"{t['ours'] / t['vanilla']:>6.2f}x {ideal:>4.1f}x {t['ours'] / t['vanilla'] / ideal:>8.2f}x "
            f"{t['dense'] / t['ours']:>8.2f}x | {mem['ours'] / 2**20:>8.1f} {mem['dense'] / 2**20:>9.1f} "
            f"{mem['ours'] / mem['dense']:>12.2f}x   (max |CSA - dense| = {err:.1e})"
        )
        del case


def section_window(device, dtype, scale, repeats):
    ch, hd = max(64, int(640 * scale)), max(1, int(10 * scale))
    print(f"\n== 2. CSA per image vs story length, window 4, 4096 tokens, {ch} ch / {hd} heads ==")
    cases = {
        images: attention_case(4096, ch, hd, images, 0.5, device, dtype, repeats, window=4)["ours"]
        for images in (4, 8, 16, 32)
    }
    t = timed_all(cases, device, repeats)
    for images, total in t.items():
        per = total / images
        print(f"  {images:>2} images: {per * 1e3:8.3f} ms per image  ({per / (t[4] / 4):.2f}x of 4 images)")


def section_sampling(repeats):
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_host import host_root

    sys.path.insert(0, str(host_root()))
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import comfy.sample

    from pack_loader import submodule
    from tiny_models import factory

    node = submodule("nodes.consistent_attention").ConsistentSelfAttention()
    model, clip, _ = factory.tiny_checkpoint("sdxl")
    settings = dict(
        keep_rate_1_8=0.5,
        keep_rate_1_16=0.5,
        keep_rate_1_32=0.5,
        keep_rate_1_64=0.5,
        blocks="up",
        warmup_steps=1,
        start_percent=0.0,
        end_percent=100.0,
        apply_probability="0.7, 0.9@40",
        window=0,
        seed=0,
        strength=1.0,
    )
    patched = node.patch(model, **settings)[0]
    out = clip.encode_from_tokens(
        clip.tokenize("a man in a red jacket"), return_pooled=True, return_dict=True
    )
    cond = [[out["cond"].repeat(4, 1, 1), {"pooled_output": out["pooled_output"].repeat(4, 1)}]]
    latent = torch.zeros(4, 4, 16, 16)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(0))

    def run(m):
        return comfy.sample.sample(
            m, noise, 6, 5.0, "euler", "normal", cond, cond, latent, seed=0, disable_pbar=True
        )

    print("\n== 3. whole sampling, tiny SDXL-shaped model, 4 images 128x128, 6 steps euler, cfg 5 (CPU) ==")
    run(model), run(patched)
    tv, tp = [], []
    for _ in range(repeats):  # interleaved, so load changes hit both alike
        t0 = time.perf_counter()
        run(model)
        tv.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        run(patched)
        tp.append(time.perf_counter() - t0)
    v, p = min(tv), min(tp)
    print(
        f"  unpatched {v:.3f} s, CSA {p:.3f} s: overhead {100 * (p / v - 1):+.1f} % (best of {repeats}, "
        f"interleaved)"
    )


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child-mem":
        child_main(*sys.argv[2:8])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--width-scale", type=float, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--skip-sampling", action="store_true")
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    scale = a.width_scale if a.width_scale is not None else (1.0 if device.type == "cuda" else 0.25)
    repeats = a.repeats or (20 if device.type == "cuda" else 5)
    print(
        f"torch {torch.__version__}, device {device}"
        + (
            f" ({torch.cuda.get_device_name()})"
            if device.type == "cuda"
            else f", {torch.get_num_threads()} threads"
        )
    )
    section_attention(device, dtype, scale, repeats)
    section_window(device, dtype, scale, repeats)
    if not a.skip_sampling:
        section_sampling(3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
