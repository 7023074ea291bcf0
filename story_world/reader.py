"""The attribute reader: a small CNN that reads a world picture back into attributes.

It looks at each half of a picture (characters stand on the left or on the right) and
says whether a character is there and, if so, its kind, hair, shirt and pattern; the scene is
read from both halves together. Trained on the world's own drawings (ground truth is known),
with blur, noise and colour jitter so it also reads a model's softer pictures.
"""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .draw import draw
from .sampling import random_picture
from .vocabulary import CHARACTER_ATTRIBUTES, CLASSES, POSITIONS, SIZE

HEADS = {"present": 2, **{a: len(CLASSES[a]) for a in CHARACTER_ATTRIBUTES}, "scene": len(CLASSES["scene"])}


class Reader(nn.Module):
    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * w * 8 * 4, 128),
            nn.ReLU(),
        )
        self.heads = nn.ModuleDict({k: nn.Linear(128, n) for k, n in HEADS.items()})

    def forward(self, halves: torch.Tensor) -> dict:
        """halves [N,3,SIZE,SIZE/2] in [0,1] -> logits per head."""
        h = self.features(halves)
        return {k: head(h) for k, head in self.heads.items()}


def split_halves(images: torch.Tensor) -> torch.Tensor:
    """[B,3,H,W] -> [2B,3,H,W/2]: left half then right half of each image."""
    half = images.shape[-1] // 2
    return torch.stack([images[..., :half], images[..., half:]], 1).flatten(0, 1)


def to_tensor(pictures) -> torch.Tensor:
    return torch.from_numpy(
        np.stack([np.asarray(draw(p), dtype=np.float32) / 255.0 for p in pictures])
    ).permute(0, 3, 1, 2)


def labels(pictures) -> dict:
    """Per-half labels (-100 = ignored: the attributes of an empty half)."""
    out = {k: [] for k in HEADS}
    for p in pictures:
        for pos in POSITIONS:
            c = next((c for c in p.characters if c.position == pos), None)
            out["present"].append(int(c is not None))
            out["scene"].append(CLASSES["scene"].index(p.scene))
            for a in CHARACTER_ATTRIBUTES:
                out[a].append(CLASSES[a].index(getattr(c, a)) if c is not None else -100)
    return {k: torch.tensor(v) for k, v in out.items()}


def augment(x: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    """What a model's pictures look like next to the drawings: soft (blurred by a random amount, or
    reduced and enlarged again), slightly noisy, with a small colour shift; per image."""
    b = x.shape[0]
    k = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    k = (k[:, None] * k[None]) / 256
    blur = x
    for _ in range(2):
        blur = F.conv2d(
            F.pad(blur, (2, 2, 2, 2), mode="replicate"), k.expand(3, 1, 5, 5).contiguous(), groups=3
        )
    h, w = x.shape[-2:]
    coarse = F.interpolate(F.avg_pool2d(x, 4), size=(h, w), mode="bilinear", align_corners=False)
    a = torch.rand(b, 1, 1, 1, generator=g)
    c = torch.rand(b, 1, 1, 1, generator=g) * 0.5
    x = (1 - c) * (a * blur + (1 - a) * x) + c * coarse
    x = x + 0.03 * torch.randn(x.shape, generator=g) + 0.06 * (torch.rand(b, 3, 1, 1, generator=g) - 0.5)
    return x.clamp(0, 1)


def train(n_train: int = 6000, epochs: int = 4, seed: int = 0, batch: int = 64, log=print) -> Reader:
    torch.manual_seed(seed)
    rng = random.Random(seed + 99)
    pics = [random_picture(rng, two_probability=0.4) for _ in range(n_train)]
    x, y = split_halves(to_tensor(pics)), labels(pics)
    model = Reader()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    steps = epochs * (n // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps)
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=g)
        total = 0.0
        for i in range(0, n - batch + 1, batch):
            idx = order[i : i + batch]
            out = model(augment(x[idx], g))
            loss = sum(F.cross_entropy(out[k], y[k][idx], ignore_index=-100) for k in HEADS)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            total += loss.item()
        log(f"reader epoch {epoch + 1}/{epochs} loss {total / (n // batch):.4f}")
    return model.eval()


@torch.no_grad()
def accuracy(model: Reader, n: int = 1000, seed: int = 12345) -> dict:
    """Held-out accuracy per head (attributes on halves holding a character), fresh pictures, augmented."""
    rng = random.Random(seed)
    pics = [random_picture(rng, two_probability=0.4) for _ in range(n)]
    x, y = split_halves(to_tensor(pics)), labels(pics)
    x = augment(x, torch.Generator().manual_seed(seed))
    out = model(x)
    acc = {}
    for k in HEADS:
        keep = y[k] != -100
        acc[k] = float((out[k].argmax(-1)[keep] == y[k][keep]).float().mean())
    present = out["present"].argmax(-1).view(-1, 2).sum(1)
    truth = torch.tensor([len(p.characters) for p in pics])
    acc["count"] = float((present == truth).float().mean())
    scene = out["scene"].view(-1, 2, HEADS["scene"]).mean(1).argmax(-1)
    acc["scene_image"] = float((scene == y["scene"].view(-1, 2)[:, 0]).float().mean())
    return acc


@torch.no_grad()
def read(model: Reader, images: torch.Tensor) -> list[dict]:
    """images [B,3,H,W] (or [B,H,W,3] as ComfyUI's IMAGE) in [0,1] -> per image:
    {"scene", "count", "characters": {"left"|"right": {kind, hair, shirt, pattern, "p": presence}},
    "main": position}."""
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    if images.shape[-2:] != (SIZE, SIZE):
        images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    out = model(split_halves(images.float().clamp(0, 1)))
    B = images.shape[0]
    pres = out["present"].softmax(-1)[:, 1].view(B, 2)
    scene = out["scene"].view(B, 2, -1).mean(1).argmax(-1)
    result = []
    for b in range(B):
        chars = {}
        for j, pos in enumerate(POSITIONS):
            r = 2 * b + j
            chars[pos] = {a: CLASSES[a][int(out[a][r].argmax())] for a in CHARACTER_ATTRIBUTES}
            chars[pos]["p"] = float(pres[b, j])
        main = POSITIONS[int(pres[b].argmax())]
        result.append(
            {
                "scene": CLASSES["scene"][int(scene[b])],
                "count": int((pres[b] > 0.5).sum()),
                "characters": chars,
                "main": main,
            }
        )
    return result


def save(model: Reader, path: Path, info: dict | None = None) -> None:
    import json

    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(path),
        metadata={"info": json.dumps(info or {})},
    )


def load(path: Path) -> Reader:
    import safetensors.torch

    model = Reader()
    model.load_state_dict(safetensors.torch.load_file(str(path)))
    return model.eval()
