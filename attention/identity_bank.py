"""The identity bank: sampled self-attention tokens of each character's identity images.

A *write* run records, per (character, step sigma, layer, guidance half), the shared tokens of
the character's identity images: the attn1 input after norm1, before the key/value projections,
so a later *read* run lets the same layer project them. Held on the CPU in fp16 by default and
saved as .safetensors (tensors plus a JSON index in the metadata) so a story can continue in
another session or on another server. Pure torch + safetensors, no ComfyUI import.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

FORMAT = "storydiffusion.identity_bank"
VERSION = 1
Layer = tuple  # (block_name, block_id, block_index), e.g. ("output", 3, 0)


def sanitize_name(name: str, default: str = "identity_bank") -> str:
    """A safe file stem: letters, digits, '-', '_' and '.', no leading dot, no path parts, <= 100 chars."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).strip()).strip("._")
    stem = stem.removesuffix(".safetensors").strip("._")
    return (stem or default)[:100]


def _layer_key(layer) -> tuple:
    name, block_id, index = layer
    return (str(name), int(block_id), int(index))


class IdentityBank:
    """Recorded tokens per (character, sigma, layer, half); tokens(...) reads the nearest sigma."""

    def __init__(self, dtype: torch.dtype = torch.float16, device: str | torch.device = "cpu"):
        self.dtype = dtype
        self.device = torch.device(device)
        self._store: dict[tuple, dict[float, torch.Tensor]] = {}  # (character, half, layer) -> {sigma: [N_ref, C]}

    def __deepcopy__(self, memo):  # one shared object, also through ModelPatcher.clone()
        return self

    # ---- reading ---------------------------------------------------------------------
    @property
    def characters(self) -> list[str]:
        return sorted({c for c, _, _ in self._store})

    def layers(self, character: str) -> list[tuple]:
        return sorted({layer for c, _, layer in self._store if c == character})

    def sigmas(self, character: str) -> list[float]:
        found = set()
        for (c, _, _), by_sigma in self._store.items():
            if c == character:
                found.update(by_sigma)
        return sorted(found, reverse=True)

    def tokens(self, character: str, sigma: float, layer: tuple, half: int = 0) -> torch.Tensor | None:
        """[N_ref, C] tokens of `character` at the recorded sigma nearest to `sigma` for `layer`
        = (block_name, block_id, block_index); `half` 0 = positive (cond), 1 = negative (uncond)
        guidance half. None when nothing is recorded for that character and layer."""
        by_sigma = self._store.get((character, int(half), _layer_key(layer)))
        if not by_sigma:
            return None
        nearest = min(by_sigma, key=lambda s: (abs(s - float(sigma)), s))
        return by_sigma[nearest]

    def __len__(self) -> int:
        return sum(len(v) for v in self._store.values())

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for v in self._store.values() for t in v.values())

    def summary(self) -> str:
        if not self._store:
            return "empty identity bank"
        parts = [f"{c}: {len(self.sigmas(c))} steps x {len(self.layers(c))} layers" for c in self.characters]
        return f"identity bank ({self.nbytes / 2**20:.1f} MiB): " + "; ".join(parts)

    # ---- writing ---------------------------------------------------------------------
    def record(self, character: str, sigma: float, layer: tuple, tokens: torch.Tensor, half: int = 0) -> None:
        """Store [N_ref, C] tokens (copied to the bank's device and dtype), replacing earlier ones."""
        if tokens.ndim != 2:
            raise ValueError(f"bank tokens must be [N_ref, C], got {tuple(tokens.shape)}")
        key = (str(character), int(half), _layer_key(layer))
        stored = tokens.detach().to(device=self.device, dtype=self.dtype, copy=True).contiguous()
        self._store.setdefault(key, {})[float(sigma)] = stored

    def remove(self, characters) -> None:
        names = set(characters)
        self._store = {k: v for k, v in self._store.items() if k[0] not in names}

    def clear(self) -> None:
        self._store = {}

    def update_from(self, other: "IdentityBank") -> None:
        """Take over every character recorded in `other`, replacing this bank's data for them."""
        self.remove(other.characters)
        for key, by_sigma in other._store.items():
            self._store[key] = {s: t.to(device=self.device, dtype=self.dtype) for s, t in by_sigma.items()}

    # ---- files -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        tensors, index = {}, []
        for (character, half, layer), by_sigma in sorted(self._store.items(), key=lambda kv: repr(kv[0])):
            for sigma in sorted(by_sigma, reverse=True):
                name = f"t{len(index)}"
                tensors[name] = by_sigma[sigma].contiguous()
                index.append({"tensor": name, "character": character, "half": half, "layer": list(layer), "sigma": sigma})
        meta = {"format": FORMAT, "version": str(VERSION), "dtype": str(self.dtype).removeprefix("torch."),
                "characters": json.dumps(self.characters), "index": json.dumps(index)}
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "IdentityBank":
        from safetensors import safe_open

        path = Path(path)
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise ValueError(f"{path.name} is not an identity bank file (no '{FORMAT}' metadata)")
            if int(meta.get("version", "0")) > VERSION:
                raise ValueError(f"{path.name} was written by a newer version (format {meta.get('version')})")
            dtype = getattr(torch, meta.get("dtype", "float16"), torch.float16)
            bank = cls(dtype=dtype)
            for entry in json.loads(meta["index"]):
                t = f.get_tensor(entry["tensor"])
                key = (entry["character"], int(entry["half"]), _layer_key(entry["layer"]))
                bank._store.setdefault(key, {})[float(entry["sigma"])] = t.to(dtype)
        return bank
