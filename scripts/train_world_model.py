"""Train the story world's toy text-to-image model (VAE, then text encoder + UNet) on the CPU or a GPU.

    .venv/bin/python scripts/train_world_model.py --threads 2   # the shipped model (README; ~65 min here)
    .venv/bin/python scripts/train_world_model.py --resume   # continue from work/train_world/state.pt

Stages, each a fixed number of steps over a stream of world pictures that is a pure function of
(seed, index) (story_world.sampling.dataset_item), with noise from generators seeded per step, so
an interrupted run resumed from its last checkpoint gives bit-identical weights:

1. vae:  ComfyUI's TAESD decoder + an encoder of TAESD's exact layout whose residual convs are
         zero (so it is a thin, cheap conv stack that TAESD's class computes exactly); trained on
         crops with an L1 + L2 loss. Latent mean/std set vae_shift/vae_scale so that the UNet
         sees unit-variance latents through ComfyUI's SD1.5 latent format.
2. unet: ComfyUI's SD1.5 UNet (small widths) + ComfyUI's SD1 CLIP text encoder (small widths),
         v-prediction (--prediction) on SD1.5's own noise schedule with extra low-frequency noise
         (--offset-noise, --coarse-noise), captions dropped 10% of the time so classifier-free
         guidance works; every --decoder-every steps the VAE decoder takes a step too (the encoder
         is frozen from here on, so the UNet's latents never change).
3. decoder: the VAE decoder alone, its loss weighted towards the characters' pixels (they are
         small; identity lives there).

Checkpoints every --ckpt-minutes to --work; the final weights go to --out (one safetensors file
with unet./clip./vae. prefixes and the configs in its metadata; world_model/build.py loads it).
One torch thread by default (--threads raises it); a CUDA device is used when present.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from comfy_host import host_root, pack_module  # noqa: E402

sys.path.insert(0, str(host_root()))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402


def progress(stage: str, step: int, total: int, t0: float, start: int, loss: float) -> None:
    done = step - start
    rate = (time.time() - t0) / max(1, done)
    eta = rate * (total - step)
    bar = "#" * int(30 * step / total)
    print(
        f"\r[{stage}] |{bar:<30}| {step}/{total} loss {loss:.4f} {rate:.2f}s/step eta {eta / 60:.1f} min",
        end="",
        flush=True,
    )


def main(argv=None) -> int:
    opts = pack_module("world_model.train_options")
    ap = opts.parser(__doc__, ROOT)
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    from comfy.cli_args import args as comfy_args

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    comfy_args.cpu = device.type == "cpu"
    build = pack_module("world_model.build")
    tr = pack_module("world_model.training")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    state_path = work / "state.pt"

    torch.manual_seed(args.seed)
    taesd = build.build_taesd().to(device)
    tr.init_weights(taesd)
    with torch.no_grad():
        taesd.vae_scale.fill_(1.0)
        taesd.vae_shift.fill_(0.0)
    tr.thin_encoder_masks(taesd)
    model = build.build_unet(device=device, prediction=args.prediction)
    unet = model.diffusion_model
    tr.init_weights(unet)
    with torch.no_grad():  # the usual diffusion init: residual branches and the output start at zero
        for name, mod in unet.named_modules():
            if name == "out.2" or name.endswith("out_layers.3") or name.endswith("proj_out"):
                for p in mod.parameters():
                    p.zero_()
    clip = build.build_clip(device=device)
    text = clip.cond_stage_model.clip_l
    tr.trainable_clip_layers()
    for p in text.transformer.parameters():  # ComfyUI's SDClipModel freezes its weights on construction
        p.requires_grad_(True)
    tr.init_weights(text.transformer)
    with torch.no_grad():
        for name, p in text.transformer.named_parameters():
            if "embedding" in name:
                p.normal_(0, args.token_std if "token_embedding" in name else 0.02)
    # The token table stays at its seeded random init: the world's captions use ~100 of its 49408 rows,
    # and its dense gradient (and AdamW update) cost half of every step on a CPU. Distinct random
    # vectors are all the layers above need.
    text.transformer.text_model.embeddings.token_embedding.weight.requires_grad_(False)
    vae_params = [
        p
        for p in taesd.parameters()
        if p.requires_grad and p is not taesd.vae_scale and p is not taesd.vae_shift
    ]
    vae_opt = torch.optim.AdamW(vae_params, lr=1e-3, weight_decay=0.0)
    main_params = [p for p in [*unet.parameters(), *text.transformer.parameters()] if p.requires_grad]
    opt = torch.optim.AdamW(main_params, lr=args.lr, weight_decay=0.01)
    ema = tr.Ema(main_params, args.ema) if args.ema else None
    bf16 = args.bf16 == "on" or (args.bf16 == "auto" and tr.native_bf16(device))
    run_args = {
        k: v
        for k, v in vars(args).items()
        if k not in ("resume", "reschedule", "export", "stop_after", "out", "work")
    }
    command = "scripts/train_world_model.py " + " ".join(
        f"--{k.replace('_', '-')} {v}" for k, v in run_args.items() if v != ap.get_default(k)
    )
    st = {
        "stage": "vae",
        "step": 0,
        "losses": [],
        "latent_mean": 0.0,
        "latent_std": 1.0,
        "seconds": 0.0,
        "args": run_args,
        "command": command,
    }
    if (args.resume or args.export) and state_path.is_file():
        ck = torch.load(state_path, map_location=device, weights_only=False)
        taesd.load_state_dict(ck["taesd"])
        unet.load_state_dict(ck["unet"])
        text.transformer.load_state_dict(ck["text"])
        vae_opt.load_state_dict(ck["vae_opt"])
        opt.load_state_dict(ck["opt"])
        if ema is not None and "ema" in ck:
            ema.load_state_dict(ck["ema"])
        st = ck["st"]
        st["seconds"] = st.get("seconds_at_ck", 0.0)
        st.setdefault("args", run_args)
        st.setdefault("command", command)
        if not args.export:
            opts.adopt_changed_args(st, run_args, command, args.reschedule)
        tr.set_rng_state(ck["rng"])
        print(f"resumed at stage {st['stage']} step {st['step']}")

    def checkpoint():
        st["seconds_at_ck"] = st["seconds"] + time.time() - t_run
        tmp = state_path.with_suffix(".tmp")
        torch.save(
            {
                "taesd": taesd.state_dict(),
                "unet": unet.state_dict(),
                "text": text.transformer.state_dict(),
                "vae_opt": vae_opt.state_dict(),
                "opt": opt.state_dict(),
                "ema": None if ema is None else ema.state_dict(),
                "st": st,
                "rng": tr.rng_state(),
            },
            tmp,
        )
        tmp.replace(state_path)

    if args.export:
        if not state_path.is_file():
            print(f"error: no checkpoint at {state_path}", file=sys.stderr)
            return 2
        print(f"exporting stage {st['stage']} step {st['step']}")
        return export(args, st, unet, text, taesd, ema, device, build, work, 0.0)

    last_ck = t_run = time.time()
    run_steps = 0
    k_latent = 0.18215  # ComfyUI's SD1.5 latent format scale

    def vae_loss(gen_seed: int, first_index: int, train_encoder: bool, character_weight: float = 0.0):
        """Encoder (thin TAESD) + TAESD decoder on random latent crops: L1 + L2 (+ a small latent penalty);
        character_weight > 0 weighs the characters' pixels 1 + character_weight times."""
        g = torch.Generator().manual_seed(gen_seed)
        indices = range(first_index, first_index + args.vae_batch)
        imgs, _ = tr.images_for(indices, args.seed, args.keep)
        imgs = imgs.to(device)
        weight = None
        if character_weight:
            weight = 1 + character_weight * tr.character_masks(indices, args.seed, args.keep).to(device)
        with torch.set_grad_enabled(train_encoder):
            lat = tr.thin_encode(taesd, imgs)  # [B,4,8,8]
        n, crop = lat.shape[-1], min(args.vae_crop, lat.shape[-1])
        oy = torch.randint(0, n - crop + 1, (1,), generator=g).item()
        ox = torch.randint(0, n - crop + 1, (1,), generator=g).item()
        z = lat[:, :, oy : oy + crop, ox : ox + crop]
        noise = torch.randn(z.shape, generator=g).to(device)
        z = z + 0.05 * z.detach().std() * noise
        rec = taesd.taesd_decoder(z)
        tgt = imgs[:, :, oy * 8 : (oy + crop) * 8, ox * 8 : (ox + crop) * 8]
        if weight is not None:
            w = weight[:, :, oy * 8 : (oy + crop) * 8, ox * 8 : (ox + crop) * 8]
            err = (rec - tgt).abs() + (rec - tgt).pow(2)
            return (w * err).sum() / (w.sum() * 3) + 1e-4 * lat.pow(2).mean()
        return F.l1_loss(rec, tgt) + F.mse_loss(rec, tgt) + 1e-4 * lat.pow(2).mean()

    def stop_now():
        return args.stop_after and run_steps >= args.stop_after

    def descend(optimizer, loss, lr: float, clip_params=None) -> None:
        """One optimiser step at learning rate lr (gradient norm clipped to 1 when clip_params)."""
        for pg in optimizer.param_groups:
            pg["lr"] = lr
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_params is not None:
            torch.nn.utils.clip_grad_norm_(clip_params, 1.0)
        optimizer.step()

    def end_of_step(stage: str, tag: str, step: int, loss: float, total: int, window: int) -> bool:
        """Count the step, log its loss, show progress, checkpoint when due; True when --stop-after stops."""
        nonlocal run_steps, last_ck
        st["step"] += 1
        run_steps += 1
        st["losses"].append((tag, step, loss))
        progress(stage, st["step"], total, t0, start, float(np.mean([x[2] for x in st["losses"][-window:]])))
        if time.time() - last_ck > args.ckpt_minutes * 60 or stop_now():
            checkpoint()
            last_ck = time.time()
            if stop_now():
                print("\nstopped (--stop-after)")
                return True
        return False

    # ---- stage 1: VAE ----
    if st["stage"] == "vae":
        t0, start = time.time(), st["step"]
        while st["step"] < args.vae_steps:
            step = st["step"]
            lr = (
                1e-3
                * min(1.0, (step + 1) / 50)
                * (0.5 * (1 + math.cos(math.pi * step / args.vae_steps)) * 0.9 + 0.1)
            )
            loss = vae_loss(
                args.seed * 7919 + step,
                10_000_000 + step * args.vae_batch,
                train_encoder=True,
                character_weight=args.vae_character_weight,
            )
            descend(vae_opt, loss, lr)
            if end_of_step("vae", "vae", step, loss.item(), args.vae_steps, 20):
                return 0
        print()
        with torch.no_grad():
            imgs, _ = tr.images_for(range(20_000_000, 20_000_256), args.seed, args.keep)
            lat = tr.thin_encode(taesd, imgs.to(device))
            st["latent_mean"], st["latent_std"] = float(lat.mean()), float(lat.std())
            taesd.vae_scale.fill_(k_latent * st["latent_std"])
            taesd.vae_shift.fill_(-st["latent_mean"] / (st["latent_std"] * k_latent))
        print(f"latent mean {st['latent_mean']:.3f} std {st['latent_std']:.3f}")
        st["stage"], st["step"] = "unet", 0
        checkpoint()
        last_ck = time.time()

    # ---- stage 2: text encoder + UNet ----
    sigmas = model.model_sampling.sigmas.to(device)  # SD1.5's 1000 training sigmas
    acp = 1.0 / (1.0 + sigmas**2)
    tokenizer = clip.tokenizer
    token_cache: dict[str, list[int]] = {}

    def tokens(caption: str) -> list[int]:
        if caption not in token_cache:
            token_cache[caption] = [t[0] for t in tokenizer.tokenize_with_weights(caption)["l"][0]]
        return token_cache[caption]

    if st["stage"] == "unet":
        t0, start = time.time(), st["step"]
        m, s = st["latent_mean"], st["latent_std"]
        while st["step"] < args.unet_steps:
            step = st["step"]
            g = torch.Generator().manual_seed(args.seed * 104729 + step)
            idx = [step * args.batch + i for i in range(args.batch)]
            imgs, caps = tr.images_for(idx, args.seed, args.keep)
            drop = torch.rand(args.batch, generator=g) < 0.1
            caps = ["" if d else c for c, d in zip(caps, drop.tolist(), strict=True)]
            with torch.no_grad():
                z0 = (tr.thin_encode(taesd, imgs.to(device)) - m) / s
            t = torch.randint(0, 1000, (args.batch,), generator=g)
            eps = torch.randn(z0.shape, generator=g).to(device)
            eps = tr.low_frequency_noise(eps, g, args.offset_noise, args.coarse_noise)
            a = acp[t.to(device)].view(-1, 1, 1, 1)
            xt = a.sqrt() * z0 + (1 - a).sqrt() * eps
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
                ctx = text([tokens(c) for c in caps])[0]
                pred = unet(xt, t.to(device).float(), context=ctx)
            target = eps if args.prediction == "eps" else tr.v_target(z0, eps, a)
            loss = F.mse_loss(pred.float(), target)
            lr = (
                args.lr
                * min(1.0, (step + 1) / 100)
                * (0.5 * (1 + math.cos(math.pi * step / args.unet_steps)) * 0.9 + 0.1)
            )
            descend(opt, loss, lr, clip_params=main_params)
            if ema is not None:
                ema.update()
            if (
                args.decoder_every and step % args.decoder_every == 0
            ):  # the decoder keeps learning; latents are fixed
                dec_loss = vae_loss(
                    args.seed * 15485863 + step, 30_000_000 + step * args.vae_batch, train_encoder=False
                )
                dec_lr = 5e-4 * (0.5 * (1 + math.cos(math.pi * step / args.unet_steps)) * 0.9 + 0.1)
                descend(vae_opt, dec_loss, dec_lr)
                st["losses"].append(("decoder", step, dec_loss.item()))
            if end_of_step("unet", "unet", step, loss.item(), args.unet_steps, 50):
                return 0
        print()
        st["stage"], st["step"] = "decoder", 0
        checkpoint()
        last_ck = time.time()

    # ---- stage 3: the decoder alone, weighted towards the characters (latents and UNet unchanged) ----
    if st["stage"] == "decoder":
        t0, start = time.time(), st["step"]
        while st["step"] < args.decoder_steps:
            step = st["step"]
            loss = vae_loss(
                args.seed * 32452843 + step,
                40_000_000 + step * args.vae_batch,
                train_encoder=False,
                character_weight=args.character_weight,
            )
            lr = 5e-4 * (0.5 * (1 + math.cos(math.pi * step / args.decoder_steps)) * 0.9 + 0.1)
            descend(vae_opt, loss, lr)
            if end_of_step("decoder", "decoder3", step, loss.item(), args.decoder_steps, 20):
                return 0
        print()
        st["stage"] = "done"
        checkpoint()

    return export(args, st, unet, text, taesd, ema, device, build, work, st["seconds"] + time.time() - t_run)


def export(args, st, unet, text, taesd, ema, device, build, work, seconds) -> int:
    """Write --out: the UNet and text encoder as their moving averages (when kept), the VAE as trained."""
    if ema is not None and ema.updates:
        ema.swap()
    losses = [x[2] for x in st["losses"] if x[0] == "unet"]
    run = st.get("args", {})
    info = {
        "command": st.get("command", ""),
        "vae_steps": run.get("vae_steps"),
        "unet_steps": run.get("unet_steps"),
        "batch": run.get("batch"),
        "seed": run.get("seed"),
        "train_seconds": round(seconds or st.get("seconds_at_ck", 0.0)),
        "device": device.type,
        "stage": st["stage"],
        "step": st["step"],
        "final_unet_loss_last100": float(np.mean(losses[-100:])) if losses else None,
        "ema_updates": 0 if ema is None else ema.updates,
    }
    build.save(Path(args.out), unet, text.transformer, taesd, info, prediction=run.get("prediction", "eps"))
    (work / "losses.json").write_text(json.dumps(st["losses"]))
    print(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.1f} MB); {json.dumps(info)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
