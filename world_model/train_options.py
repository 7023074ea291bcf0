"""The story world trainer's command line: its options (with their defaults, the shipped model's recipe),
which stage reads each, and what a resumed run may change (scripts/train_world_model.py uses them)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path


def parser(description: str, root: Path) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--vae-steps", type=int, default=800)
    ap.add_argument(
        "--vae-character-weight",
        type=float,
        default=4.0,
        help="stage 1: extra loss weight of character pixels (they are small; identity lives there)",
    )
    ap.add_argument("--vae-batch", type=int, default=16)
    ap.add_argument(
        "--vae-crop",
        type=int,
        default=6,
        help="latent crop size for decoder training (x8 pixels; latents are 8x8)",
    )
    ap.add_argument("--unet-steps", type=int, default=10000)
    ap.add_argument(
        "--decoder-every",
        type=int,
        default=4,
        help="during the UNet stage, one more VAE-decoder step every N UNet steps (0: none); encoder frozen",
    )
    ap.add_argument(
        "--decoder-steps", type=int, default=150, help="stage 3: decoder-only steps after the UNet"
    )
    ap.add_argument(
        "--character-weight", type=float, default=8.0, help="stage 3: extra loss weight of character pixels"
    )
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=8e-4)
    ap.add_argument("--keep", type=float, default=0.6, help="probability a caption keeps each attribute")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--bf16",
        choices=("auto", "on", "off"),
        default="auto",
        help="bfloat16 autocast for the UNet and text encoder; auto: on CUDA and on CPUs with native bf16 "
        "(AVX512-BF16/AMX), where it is ~2x faster; off elsewhere (10x slower on an AVX2-only CPU)",
    )
    ap.add_argument(
        "--ema",
        type=float,
        default=0.999,
        help="decay of the exponential moving average of the UNet and text encoder weights that is "
        "exported (0: export the raw weights)",
    )
    ap.add_argument(
        "--prediction",
        choices=("v", "eps"),
        default="v",
        help="what the UNet predicts: v (SD2.x-768's parametrisation: at high noise the model outputs the "
        "picture itself, which the caption must decide) or eps, the noise (SD1.5's)",
    )
    ap.add_argument(
        "--offset-noise",
        type=float,
        default=0.6,
        help="UNet training noise: weight of one extra constant per latent channel (then rescaled to unit "
        "variance); hides the scene's colour in the noise so that the caption must give it (0: white noise)",
    )
    ap.add_argument(
        "--coarse-noise",
        type=float,
        default=0.3,
        help="UNet training noise: weight of an extra 2x2 block pattern per channel (which half a character "
        "stands in); 0: none",
    )
    ap.add_argument(
        "--token-std",
        type=float,
        default=1.0,
        help="standard deviation of CLIP's token table, which stays frozen at this seeded random init; at "
        "CLIP's own 0.02 two different captions moved the encoder's output by about 1%% of its norm",
    )
    ap.add_argument("--ckpt-minutes", type=float, default=4.0)
    ap.add_argument("--work", default=str(root / "work" / "train_world"))
    ap.add_argument("--out", default=str(root / "models" / "story_world" / "story_world.safetensors"))
    ap.add_argument("--resume", action="store_true")
    ap.add_argument(
        "--reschedule",
        action="store_true",
        help="with --resume: allow a new step count for the stage under way (its schedule changes from "
        "here; the recorded command becomes the two commands that reproduce the weights)",
    )
    ap.add_argument(
        "--export",
        action="store_true",
        help="only write --out from the last checkpoint (e.g. a preview mid-run)",
    )
    ap.add_argument(
        "--stop-after",
        type=int,
        default=0,
        help="stop (with a checkpoint) after this many steps of this run (tests of resume)",
    )
    return ap


STAGES = ("vae", "unet", "decoder", "done")
# The stage whose steps read each argument; seed and keep shape every stage's data.
STAGE_OF = {
    "vae_steps": "vae",
    "vae_batch": "vae",
    "vae_crop": "vae",
    "vae_character_weight": "vae",
    "unet_steps": "unet",
    "batch": "unet",
    "lr": "unet",
    "decoder_every": "unet",
    "bf16": "unet",
    "ema": "unet",
    "offset_noise": "unet",
    "prediction": "unet",
    "coarse_noise": "unet",
    "decoder_steps": "decoder",
    "character_weight": "decoder",
    "seed": "vae",
    "token_std": "vae",
    "keep": "vae",
}


def adopt_changed_args(st: dict, run_args: dict, command: str, reschedule: bool = False) -> None:
    """A resumed run may change the arguments of stages that have not begun (or that begin now, at
    step 0): the weights then equal a fresh run with the new arguments, whose command is recorded.
    With reschedule, the step count of the stage under way may change too: the recorded command is
    then the earlier one stopped here (--stop-after) followed by this one. Changing anything else a
    stage already used raises (start afresh instead)."""
    changed = [k for k, v in run_args.items() if st["args"].get(k) != v and k in STAGE_OF]
    now = STAGES.index(st["stage"])
    begun = [k for k in changed if STAGES.index(STAGE_OF[k]) < now]
    under_way = [k for k in changed if k not in begun and STAGE_OF[k] == st["stage"] and st["step"]]
    if reschedule and not begun and under_way == [f"{st['stage']}_steps"]:
        steps_done = st["step"] + sum(st["args"][f"{stage}_steps"] for stage in STAGES[:now])
        # --stop-after counts the steps of one run: the earlier runs of the chain stopped after theirs
        earlier = sum(int(w) for w in re.findall(r"--stop-after (\d+)", st["command"]))
        chain = f"{st['command']} --stop-after {steps_done - earlier} && {command} --resume --reschedule"
        print(f"rescheduled: {under_way[0]} {st['args'][under_way[0]]} -> {run_args[under_way[0]]}")
        st["args"], st["command"] = dict(run_args), chain
        return
    used = begun + under_way
    if used:
        flag = "--" + used[0].replace("_", "-")
        if used[0] not in st["args"]:
            raise SystemExit(
                f"error: the checkpoint was written by a trainer without {flag} (its stage "
                f"{STAGE_OF[used[0]]} ran without it); start afresh without --resume"
            )
        raise SystemExit(
            f"error: {flag} changed, but stage {STAGE_OF[used[0]]} has already run "
            f"with {st['args'].get(used[0])}; resume with the same value or start afresh without --resume"
        )
    if changed or any(st["args"].get(k) != v for k, v in run_args.items()):
        if changed:
            print("resumed with new arguments for stages not begun: " + ", ".join(changed))
        st["args"], st["command"] = dict(run_args), command
