"""Identity bank: size, fidelity and loading memory of the storage levers, measured side by side.

1. Size per identity image at SDXL 1024x1024, 30 steps, CSA keep-rate 0.5, CFG: the full bank
   (every step, CSA's keep-rate, fp16, both halves: what the previous version stored), the
   default, and each lever alone. Sizes are arithmetic (attention/bank_storage.bank_bytes on
   SDXL's self-attention layers); the formula is first checked against the bytes actually
   recorded by a write run on the tiny SDXL-shaped model (same layers, widths / 5).
2. Fidelity on the tiny SDXL-shaped model (1 identity image, 1 later frame, 30 steps, 64 px,
   euler, CFG 5 with a different negative prompt, CSA defaults but every layer reading at every
   step after warm-up): each bank's read run against the full bank's read run: max and mean abs
   difference of the first up-block self-attention layer's output at step 1 (inputs identical
   until the bank) and over all steps, and of the final latent; `ratio` / `mean r` = that max /
   mean difference divided by the one without a bank. The full bank written with another token
   draw (CSA seed 1) shows the measure's noise floor. The tests' tolerance is on `mean r`.
   Takes about half an hour on a busy 2-core CPU (--skip-fidelity to leave it out).
3. Peak RSS while opening a bank file of >= 1 GiB (full SDXL widths, fp16), lazily (header only,
   then one step's tokens of every layer, as a read run's first step) vs eagerly (every tensor),
   each in a fresh process.

    .venv/bin/python bench/bench_bank.py [--skip-fidelity] [--fidelity-family sdxl|sd15] [--steps 30] [--hw 8]
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
STEPS, RATE, SIDE = 30, 0.5, 1024
TOLERANCE = 0.5  # mean |latent(default) - latent(full)| / mean |latent(no bank) - latent(full)|


def pure(name):
    if "storydiffusion_bench" not in sys.modules:
        parent = types.ModuleType("storydiffusion_bench")
        parent.__path__ = [str(ROOT)]
        sys.modules["storydiffusion_bench"] = parent
    return importlib.import_module(f"storydiffusion_bench.{name}")


bs = pure("attention.bank_storage")
MiB, GiB = 2**20, 2**30

LEVERS = {
    "full (previous version)": bs.FULL,
    "default": bs.DEFAULT,
    "steps 5 only": bs.BankSettings(steps=5, keep_rate=0.0, precision="fp16"),
    "steps 10 only": bs.BankSettings(steps=10, keep_rate=0.0, precision="fp16"),
    "steps 10, interpolate": bs.BankSettings(
        steps=10, keep_rate=0.0, precision="fp16", between="interpolate"
    ),
    "keep-rate 0.25 only": bs.BankSettings(steps=0, keep_rate=0.25, precision="fp16"),
    "int8 only": bs.BankSettings(steps=0, keep_rate=0.0, precision="int8"),
    "cond only": bs.BankSettings(steps=0, keep_rate=0.0, precision="fp16", halves="cond only"),
    "int8, steps 10, keep 0.25": bs.BankSettings(steps=10, keep_rate=0.25, precision="int8"),
    "int8, steps 10, cond only": bs.BankSettings(
        steps=10, keep_rate=0.0, precision="int8", halves="cond only"
    ),
}
OTHER_DRAW = "full, another token draw"  # the full bank written with CSA seed 1: the measure's noise floor


def sdxl_layers(side: int = SIDE) -> list[tuple[int, int]]:
    """(tokens, width) of SDXL's up-block self-attention layers (ComfyUI's SDXL config: output
    blocks 0-2 at 1/32 of the image, width 1280, depth 10; blocks 3-5 at 1/16, width 640, depth 2)."""
    return [((side // 32) ** 2, 1280)] * 30 + [((side // 16) ** 2, 640)] * 6


def host():
    sys.path.insert(0, str(ROOT / "scripts"))
    sys.path.insert(0, str(ROOT / "tests"))
    from comfy_host import host_root

    sys.path.insert(0, str(host_root()))
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = True
    import logging

    logging.getLogger().setLevel(logging.WARNING)


class Tiny:
    """The tiny model, the pack's nodes, and one identity image / one later frame."""

    def __init__(self, family, steps, hw, apply="0.7, 0.9@40"):
        host()
        import comfy.sample

        from pack_loader import submodule
        from tiny_models import factory

        self.sample_fn = comfy.sample.sample
        self.ca = submodule("nodes.consistent_attention").ConsistentSelfAttention()
        self.nodes = submodule("nodes.identity_bank_nodes")
        self.model, self.clip, _ = factory.tiny_checkpoint(family)
        self.steps, self.hw = steps, hw
        self.capture_block = 0 if family == "sdxl" else 3  # the first up block with a transformer
        self.csa = dict(
            keep_rate_1_8=RATE,
            keep_rate_1_16=RATE,
            keep_rate_1_32=RATE,
            keep_rate_1_64=RATE,
            blocks="up",
            warmup_steps=1,
            start_percent=0.0,
            end_percent=1.0,
            apply_probability=apply,
            window=0,
            seed=0,
            strength=1.0,
        )

    def run(self, model, text, seed, capture=None):
        def encode(t):
            out = self.clip.encode_from_tokens(self.clip.tokenize(t), return_pooled=True, return_dict=True)
            return [[out["cond"], {"pooled_output": out["pooled_output"]}]]

        cond, negative = encode(text), encode("blurry, low quality")
        latent = torch.zeros(1, 4, self.hw, self.hw)
        noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
        if capture is not None:
            model = model.clone()

            def grab(n, extra):
                if extra.get("block") == ("output", self.capture_block) and extra.get("block_index", 0) == 0:
                    capture.append(n.detach().float().clone())
                return n

            model.set_model_attn1_output_patch(grab)
        return self.sample_fn(
            model,
            noise,
            self.steps,
            5.0,
            "euler",
            "normal",
            cond,
            negative,
            latent,
            seed=seed,
            disable_pbar=True,
        )

    def write(self, settings, seed=0):
        csa = self.ca.patch(self.model, **dict(self.csa, seed=seed))[0]
        m, bank = self.nodes.write_model(csa, None, "Bob", None, "Identity Bank Write", settings)
        self.run(m, "Bob, a man with short black hair, red jacket, portrait", seed=1)
        return bank

    def read(self, bank, names="Bob"):
        cap = []
        m = self.nodes.IdentityBankRead().patch(self.ca.patch(self.model, **self.csa)[0], bank, names=names)[
            0
        ]
        latent = self.run(
            m, "Bob, a man with short black hair, red jacket, walks along the sea", seed=2, capture=cap
        )
        return latent, torch.stack(cap)

    def layer_shapes(self) -> list[tuple[int, int]]:
        """(tokens, width) of every up-block self-attention layer at this latent size."""
        shapes = {}
        m = self.model.clone()

        def grab(n, context, value, extra):
            block = extra.get("block")
            if block and block[0] == "output":
                shapes[(block[1], extra.get("block_index", 0))] = (int(n.shape[1]), int(n.shape[2]))
            return n, context, value

        m.set_model_attn1_patch(grab)
        steps, self.steps = self.steps, 1
        self.run(m, "x", 0)
        self.steps = steps
        return [shapes[k] for k in sorted(shapes)]


def section_sizes(check_family="sdxl"):
    print(
        f"\n== 1. bank size per identity image: SDXL {SIDE}x{SIDE}, {STEPS} steps, keep-rate {RATE}, CFG =="
    )
    tiny = Tiny(check_family, steps=4, hw=8)
    layers_tiny = tiny.layer_shapes()
    for name in ("full (previous version)", "default", "int8, steps 10, cond only"):
        s = LEVERS[name]
        bank = tiny.write(s)
        formula = bs.bank_bytes(layers_tiny, tiny.steps, s, csa_rate=RATE, warmup=1)
        print(
            f"  formula check on the tiny {check_family} model ({len(layers_tiny)} layers, 4 steps), {name}: "
            f"recorded {bank.nbytes} B, formula {formula} B -> "
            f"{'equal' if bank.nbytes == formula else 'DIFFERENT'}"
        )
    full = bs.bank_bytes(sdxl_layers(), STEPS, bs.FULL, csa_rate=RATE)
    print(f"  {'settings':28s} {'per step':>11s} {'total':>11s}  {'of full':>7s}")
    for name, s in LEVERS.items():
        total = bs.bank_bytes(sdxl_layers(), STEPS, s, csa_rate=RATE)
        steps = len(bs.recorded_steps(STEPS, s.steps, 1))
        print(
            f"  {name:28s} {total / steps / MiB:8.1f} MiB {total / MiB:8.1f} MiB  {total / full:6.3f}"
            f"   ({steps} recorded steps)"
        )
    default = bs.bank_bytes(sdxl_layers(), STEPS, bs.DEFAULT, csa_rate=RATE)
    print(
        f"  full: {full / GiB:.2f} GiB per identity image ({full / STEPS / MiB:.1f} MiB per step); default: "
        f"{default / MiB:.1f} MiB ({'meets' if default <= 310 * MiB else 'MISSES'} the 310 MiB goal)"
    )


def section_fidelity(family, steps, hw):
    print(
        f"\n== 2. read run vs the full bank's read run: tiny {family} model, {steps} steps, {hw * 8} px, "
        "1 identity image, 1 frame, CFG 5 =="
    )
    tiny = Tiny(family, steps=steps, hw=hw, apply="1")  # every layer reads at every step after warm-up
    t0 = time.perf_counter()
    banks = {name: tiny.write(s) for name, s in LEVERS.items()}
    banks[OTHER_DRAW] = tiny.write(bs.FULL, seed=1)
    full_latent, full_attn = tiny.read(banks["full (previous version)"])
    none_latent, none_attn = tiny.read(banks["full (previous version)"], names="NC")
    first = 1  # the first step that reads the bank (step 0 is CSA's warm-up): same input for every run
    effect = float((none_latent - full_latent).abs().max())
    effect_mean = float((none_latent - full_latent).abs().mean())
    effect1 = float((none_attn[first] - full_attn[first]).abs().max())
    print(
        f"  scale: without a bank the latent moves by max {effect:.4f} and the self-attention output at the "
        f"first read step by max {effect1:.4f} (its mean abs: {float(full_attn[first].abs().mean()):.4f})"
    )
    print(
        "  first step: self-attention output of the first up-block layer at step 1 (identical inputs until "
        "the bank);\n  all steps: that output over every step; latent: the final latent. ratio = max "
        "deviation / max deviation without a bank; mean r: the same for the mean"
    )
    print(
        f"  {'settings':27s} {'1st max':>8s} {'1st mean':>8s} {'ratio':>6s} | {'all max':>8s} "
        f"{'all mean':>8s} | {'lat max':>8s} {'lat mean':>8s} {'ratio':>6s} {'mean r':>6s}"
    )
    rows = {}
    for name, bank in list(banks.items()) + [("no bank (reference)", None)]:
        if name.startswith("full (prev"):
            latent, attn = full_latent, full_attn
        elif bank is None:
            latent, attn = none_latent, none_attn
        else:
            latent, attn = tiny.read(bank)
        d1, da, dl = (
            (attn[first] - full_attn[first]).abs(),
            (attn - full_attn).abs(),
            (latent - full_latent).abs(),
        )
        rows[name] = (float(d1.max()) / effect1, float(dl.max()) / effect, float(dl.mean()) / effect_mean)
        print(
            f"  {name:27s} {float(d1.max()):8.4f} {float(d1.mean()):8.5f} {rows[name][0]:6.3f} | "
            f"{float(da.max()):8.4f} {float(da.mean()):8.5f} | {float(dl.max()):8.4f} "
            f"{float(dl.mean()):8.5f} {rows[name][1]:6.3f} {rows[name][2]:6.3f}"
        )
    r = rows["default"][2]
    print(
        f"  tolerance (tests, README): mean r of the default <= {TOLERANCE}: {r:.3f} "
        f"({'within' if r <= TOLERANCE else 'OUTSIDE'}); the full bank redrawn: {rows[OTHER_DRAW][2]:.3f}"
    )
    print(f"  ({time.perf_counter() - t0:.0f} s)")
    return rows


# ---- 3. loading memory ----------------------------------------------------------------------------
def make_big_bank(path: Path, steps: int) -> None:
    """A full-precision bank of one SDXL identity image at 1024^2 for `steps` steps (random tokens)."""
    ib = pure("attention.identity_bank")
    bank = ib.IdentityBank(
        settings=bs.BankSettings(steps=steps, keep_rate=0.0, precision="fp16"), family="SDXL"
    )
    g = torch.Generator().manual_seed(0)
    layers = [("output", b, d) for b in range(3) for d in range(10)] + [
        ("output", b, d) for b in (3, 4, 5) for d in (0, 1)
    ]
    for t in range(steps):
        sigma = 14.6 * (1 - t / steps) + 0.03
        for layer, (n, c) in zip(layers, sdxl_layers(), strict=True):
            for half in (0, 1):
                x = torch.randn(n // 2, c, generator=g, dtype=torch.float32).half()
                bank.record("Bob", sigma, layer, x, half=half, images=1)
    bank.save(path)


def _rss_kib(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


def child_rss(mode: str, path: str) -> None:
    """Peak resident memory above the process before opening (VmHWM reset through clear_refs;
    ru_maxrss would carry the parent's peak over exec)."""
    ib = pure("attention.identity_bank")
    Path("/proc/self/clear_refs").write_text("5")
    before = _rss_kib("VmRSS:")
    bank = ib.IdentityBank.load(path, lazy=(mode == "lazy"))
    if mode == "lazy":  # a read run's first step: every layer, both halves
        sigma = bank.sigmas("Bob")[0]
        for layer in bank.layers("Bob"):
            for half in (0, 1):
                bank.tokens("Bob", sigma, layer, half)
        bank.release()
    after = _rss_kib("VmHWM:")
    print(json.dumps({"raise_bytes": (after - before) * 1024, "entries": len(bank)}))


def section_rss():
    print("\n== 3. peak RSS while opening a >= 1 GiB bank file (fresh process each) ==")
    with tempfile.TemporaryDirectory(prefix="bench-bank-") as tmp:
        path = Path(tmp) / "big.safetensors"
        subprocess.run([sys.executable, __file__, "--make-big", str(path)], check=True)
        size = path.stat().st_size
        print(f"  file: {size / GiB:.2f} GiB (SDXL 1024^2, 10 steps, fp16, both halves, keep-rate 0.5)")
        for mode in ("lazy", "eager"):
            out = subprocess.run(
                [sys.executable, __file__, "--child-rss", mode, str(path)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = json.loads(out.strip().splitlines()[-1])
            note = " (open + one step of every layer)" if mode == "lazy" else " (every tensor)"
            print(
                f"  {mode:5s}: peak RSS +{r['raise_bytes'] / MiB:8.1f} MiB = {r['raise_bytes'] / size:.3f} "
                f"x the file{note}"
            )


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child-rss":
        torch.set_num_threads(1)
        child_rss(sys.argv[2], sys.argv[3])
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "--make-big":
        torch.set_num_threads(1)
        make_big_bank(Path(sys.argv[2]), steps=10)
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-fidelity", action="store_true")
    ap.add_argument("--fidelity-family", default="sdxl", choices=("sdxl", "sd15"))
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--hw", type=int, default=8, help="latent side of the fidelity runs (8 = 64 px)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("BENCH_THREADS", "1")))
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    section_sizes()
    if not a.skip_fidelity:
        section_fidelity(a.fidelity_family, a.steps, a.hw)
    section_rss()
    return 0


if __name__ == "__main__":
    sys.exit(main())
