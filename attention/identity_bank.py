"""The identity bank: sampled self-attention tokens of each character's identity images.

A *write* run records, per (character, step sigma, layer, guidance half), tokens of the
character's identity images: the attn1 input after norm1, before the key/value projections,
so a later *read* run lets the same layer project them. What is stored is set by
`BankSettings` (attention/bank_storage.py): by default 5 steps, CSA's share of the tokens,
int8 with a per-token scale. A bank knows the model family and the self-attention widths it
was written with, and refuses a model that differs (`check_model`).

Saved as .safetensors (tensors plus JSON metadata: settings, family, widths, sizes, index) with
reproducible bytes. `load` reads only the header; a read run materialises the tensors of the
steps it asks for (a few steps are cached) and `release()` drops them. Files of format 1 (every
step, fp16, no family) still load. Pure torch, no ComfyUI import.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from pathlib import Path

import torch

from .bank_storage import FULL, BankFileError, BankSettings, Packed, SafetensorsFile, write_safetensors

FORMAT = "storydiffusion.identity_bank"
VERSION = 2
Layer = tuple  # (block_name, block_id, block_index), e.g. ("output", 3, 0)
CACHED_STEPS = 3  # recorded steps a read keeps unpacked (nearest / the two around an interpolated sigma)


class BankMismatch(ValueError):
    """The bank was written with another model (family or self-attention widths)."""


def width_mismatch(node: str, bank, name: str, layer, got: int, want: int) -> BankMismatch:
    """The error of a read whose bank tokens do not fit the layer (every model family's read path)."""
    return BankMismatch(
        f"{node}: identity bank {bank.name} holds [{name}] tokens of width {got} for layer {layer}, but "
        f"this model's layer takes {want}: the bank was written with another model "
        f"({bank.family or 'unknown family'}). Write it again with this model."
    )


def sanitize_name(name: str, default: str = "identity_bank") -> str:
    """A safe file stem: letters, digits, '-', '_' and '.', no leading dot, no path parts, <= 100 chars."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name).strip()).strip("._")
    stem = stem.removesuffix(".safetensors").strip("._")
    return (stem or default)[:100]


def _layer_key(layer) -> tuple:
    name, block_id, index = layer
    return (str(name), int(block_id), int(index))


def layer_name(layer) -> str:
    return "{}.{}.{}".format(*_layer_key(layer))


def _parse_layer(text: str) -> tuple:
    name, block_id, index = text.rsplit(".", 2)
    return (name, int(block_id), int(index))


def _mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


class IdentityBank:
    """Recorded tokens per (character, sigma, layer, half); tokens(...) reads them at any sigma."""

    def __init__(
        self,
        dtype: torch.dtype = torch.float16,
        device: str | torch.device = "cpu",
        settings: BankSettings = FULL,
        family: str | None = None,
        widths: dict | None = None,
        name: str = "the Identity Bank Write bank",
    ):
        self.dtype = dtype
        self.device = torch.device(device)
        self.settings = settings
        self.family = family  # ComfyUI model config name, e.g. "SDXL"; None: unknown (format 1 files)
        self.widths = {_layer_key(k): int(v) for k, v in (widths or {}).items()}  # layer -> token width
        self.name = name
        self.identity_images: dict[str, int] = {}  # character -> identity images its tokens come from
        self.recorded_with: dict[
            str, BankSettings
        ] = {}  # character -> the settings its tokens were stored with
        self._store: dict[
            tuple, dict[float, Packed | tuple]
        ] = {}  # (character, half, layer) -> {sigma: data}
        self._file: SafetensorsFile | None = None  # lazily read banks: data = (values name, scale name)
        self._cache: OrderedDict = OrderedDict()  # recorded sigma -> {(character, half, layer): tensor}

    def __deepcopy__(self, memo):  # one shared object, also through ModelPatcher.clone()
        return self

    def _source(self) -> SafetensorsFile:
        assert self._file is not None  # lazy entries (name tuples) exist only in banks read from a file
        return self._file

    def empty_like(self) -> IdentityBank:
        """An empty bank with the same settings, family and widths (a write run's staging area)."""
        return IdentityBank(self.dtype, self.device, self.settings, self.family, self.widths, self.name)

    # ---- reading ---------------------------------------------------------------------
    @property
    def characters(self) -> list[str]:
        return sorted({c for c, _, _ in self._store})

    def layers(self, character: str) -> list[tuple]:
        return sorted({layer for c, _, layer in self._store if c == character})

    def sigmas(self, character: str) -> list[float]:
        found: set[float] = set()
        for (c, _, _), by_sigma in self._store.items():
            if c == character:
                found.update(by_sigma)
        return sorted(found, reverse=True)

    def tokens(self, character: str, sigma: float, layer: tuple, half: int = 0) -> torch.Tensor | None:
        """[N_ref, C] tokens of `character` for `layer` = (block_name, block_id, block_index) at `sigma`:
        the recorded step nearest in sigma, or (settings.between == "interpolate") the linear blend
        of the two recorded steps around it. `half` 0 = positive (cond), 1 = negative (uncond)
        guidance half (a "cond only" bank answers the negative half with the positive half's tokens).
        None when nothing is recorded for that character, layer and half."""
        key = (character, int(half), _layer_key(layer))
        by_sigma = self._store.get(key)
        if not by_sigma and int(half) != 0 and self.settings_of(character).halves == "cond only":
            key = (character, 0, key[2])  # stored once: the negative half reads the positive half's tokens
            by_sigma = self._store.get(key)
        if not by_sigma:
            return None
        sigma = float(sigma)
        if self.settings_of(character).between == "interpolate" and len(by_sigma) > 1:
            above = [s for s in by_sigma if s >= sigma]
            below = [s for s in by_sigma if s < sigma]
            if above and below:
                hi, lo = min(above), max(below)
                a, b = self._unpacked(key, hi), self._unpacked(key, lo)
                if a.shape == b.shape:
                    w = (sigma - lo) / (hi - lo)
                    return torch.lerp(b.float(), a.float(), w).to(self.dtype)
        nearest = min(by_sigma, key=lambda s: (abs(s - sigma), s))
        return self._unpacked(key, nearest)

    def _unpacked(self, key: tuple, sigma: float) -> torch.Tensor:
        step = self._cache.get(sigma)
        if step is not None and key in step:
            self._cache.move_to_end(sigma)
            return step[key]
        data = self._store[key][sigma]
        if isinstance(data, tuple):  # lazily read from the file
            values, scale = data
            data = Packed(self._source().read(values), self._source().read(scale) if scale else None)
        t = data.unpack(self.dtype).to(self.device)
        self._cache.setdefault(sigma, {})[key] = t
        self._cache.move_to_end(sigma)
        while len(self._cache) > CACHED_STEPS:
            self._cache.popitem(last=False)
        return t

    def settings_of(self, character: str) -> BankSettings:
        return self.recorded_with.get(character, self.settings)

    def release(self) -> None:
        """Drop the tokens a run has unpacked or read from the file (call when the run ends)."""
        self._cache = OrderedDict()

    def __len__(self) -> int:
        return sum(len(v) for v in self._store.values())

    def _entry_bytes(self, data) -> int:
        if isinstance(data, tuple):
            return sum(self._entry_size(n) for n in data if n)
        return data.nbytes

    def _entry_size(self, name: str) -> int:
        dtype, shape, _ = self._source().entries[name]
        n = 1
        for s in shape:
            n *= s
        return n * torch.empty((), dtype=dtype).element_size()

    def character_bytes(self, character: str) -> int:
        return sum(
            self._entry_bytes(d) for (c, _, _), v in self._store.items() if c == character for d in v.values()
        )

    @property
    def nbytes(self) -> int:
        return sum(self.character_bytes(c) for c in self.characters)

    def summary(self) -> str:
        if not self._store:
            return "empty identity bank"
        parts = []
        for c in self.characters:
            size = self.character_bytes(c)
            images = self.identity_images.get(c)
            each = f", {_mib(size / images)} per identity image" if images else ""
            parts.append(
                f"{c}: {_mib(size)}{each} ({len(self.sigmas(c))} steps x {len(self.layers(c))} layers; "
                f"{self.settings_of(c).describe()})"
            )
        return f"identity bank ({_mib(self.nbytes)}): " + "; ".join(parts)

    # ---- the model it belongs to ----------------------------------------------------------
    def check_model(self, family: str | None, widths: dict, model: str = "this model") -> None:
        """Raise BankMismatch unless the bank fits a model of `family` whose self-attention layers
        have `widths` (layer -> width): same family (when both are known) and, for every layer the
        bank holds, the same width."""
        theirs = {_layer_key(k): int(v) for k, v in (widths or {}).items()}
        mine = dict(self.widths)
        for (_, _, layer), by_sigma in self._store.items():  # format 1 files: widths from the shapes
            if layer not in mine and by_sigma:
                mine[layer] = int(self._shape(next(iter(by_sigma.values())))[-1])
        wrong = sorted(k for k in mine if theirs.get(k) != mine[k]) if theirs else []
        if (self.family and family and self.family != family) or wrong:

            def summary(w):
                return "/".join(str(v) for v in sorted(set(w.values()))) or "none"

            written = f"a {self.family} model" if self.family else "an unknown model family (format 1 file)"
            detail = ""
            if wrong:
                k = wrong[0]
                detail = (
                    f" Layer {layer_name(k)} holds tokens of width {mine[k]}, the model's "
                    f"{'has no such layer' if k not in theirs else 'takes ' + str(theirs[k])}."
                )
            raise BankMismatch(
                f"identity bank {self.name} was written with {written} (self-attention widths "
                f"{summary(mine)}) but {model} is {family or 'of an unknown family'} (widths "
                f"{summary(theirs)}).{detail} A bank only works with the model family it was written with: "
                "write it again with this model (Identity Bank Write), or use a model of the bank's family."
            )

    def _shape(self, data) -> tuple:
        return self._source().shape(data[0]) if isinstance(data, tuple) else data.shape

    # ---- writing ---------------------------------------------------------------------
    def record_positions(
        self,
        images: int,
        tokens: int,
        csa_rate: float,
        seed: int,
        sigma: float,
        step: int,
        total_steps: int,
        warmup: int,
    ) -> torch.Tensor | None:
        """Token positions [images, k] a write run stores at this step and resolution, None: nothing."""
        if not self.settings.records_step(step, total_steps, warmup):
            return None
        return self.settings.positions(images, tokens, csa_rate, seed, sigma)

    def records_half(self, half) -> bool:
        return self.settings.records_half(half)

    def record(
        self,
        character: str,
        sigma: float,
        layer: tuple,
        tokens: torch.Tensor,
        half: int = 0,
        images: int | None = None,
    ) -> None:
        """Store [N_ref, C] tokens (packed at the bank's precision, on the CPU), replacing earlier ones;
        `images`: how many identity images they come from (for the size per identity image)."""
        if tokens.ndim != 2:
            raise ValueError(f"bank tokens must be [N_ref, C], got {tuple(tokens.shape)}")
        key = (str(character), int(half), _layer_key(layer))
        if self.settings.precision == "fp16" and self.dtype != torch.float16:
            packed = Packed(tokens.detach().to(device="cpu", dtype=self.dtype, copy=True).contiguous())
        else:
            packed = Packed.pack(tokens, self.settings.precision)
        self._store.setdefault(key, {})[float(sigma)] = packed
        self.widths.setdefault(key[2], int(tokens.shape[-1]))
        if images is not None:
            self.identity_images[key[0]] = int(images)
        self.recorded_with[key[0]] = self.settings
        self._cache = OrderedDict()

    def remove(self, characters) -> None:
        names = set(characters)
        self._store = {k: v for k, v in self._store.items() if k[0] not in names}
        self.identity_images = {c: n for c, n in self.identity_images.items() if c not in names}
        self.recorded_with = {c: s for c, s in self.recorded_with.items() if c not in names}
        self._cache = OrderedDict()

    def clear(self) -> None:
        self._store, self.identity_images, self.recorded_with, self._cache = {}, {}, {}, OrderedDict()

    def update_from(self, other: IdentityBank) -> None:
        """Take over every character recorded in `other`, replacing this bank's data for them.
        Tokens are kept as `other` stores them (its settings stay with its characters)."""
        if len(other) and (self.family or self.widths):
            other.check_model(self.family, self.widths, model=f"identity bank {self.name}")
        self.remove(other.characters)
        for key, by_sigma in other._store.items():
            self._store[key] = {s: other._materialised(d) for s, d in by_sigma.items()}
            self.widths.setdefault(key[2], int(other._shape(next(iter(by_sigma.values())))[-1]))
        self.identity_images.update({c: n for c, n in other.identity_images.items() if c in other.characters})
        self.recorded_with.update({c: other.settings_of(c) for c in other.characters})
        if self.family is None:
            self.family = other.family
        self._cache = OrderedDict()

    def _materialised(self, data) -> Packed:
        if isinstance(data, tuple):
            values, scale = data
            return Packed(self._source().read(values), self._source().read(scale) if scale else None)
        return data

    # ---- files -----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write the bank as .safetensors: the same bank gives the same bytes."""
        path = Path(path)
        tensors: dict[str, torch.Tensor] = {}
        index: list[dict] = []
        entries = sorted(((k, s) for k, v in self._store.items() for s in v), key=lambda e: (e[0], -e[1]))
        for (character, half, layer), sigma in entries:
            data = self._materialised(self._store[(character, half, layer)][sigma])
            name = f"t{len(index):06d}"
            tensors[name] = data.values
            entry = {
                "tensor": name,
                "character": character,
                "half": half,
                "layer": list(layer),
                "sigma": sigma,
            }
            if data.scale is not None:
                tensors[name + ".scale"] = data.scale
                entry["scale"] = name + ".scale"
            index.append(entry)
        chars = {
            c: {
                "bytes": self.character_bytes(c),
                "identity_images": self.identity_images.get(c),
                "settings": json.loads(self.settings_of(c).to_json()),
            }
            for c in self.characters
        }
        meta = {
            "format": FORMAT,
            "version": str(VERSION),
            "dtype": str(self.dtype).removeprefix("torch."),
            "settings": self.settings.to_json(),
            "family": self.family or "",
            "widths": json.dumps({layer_name(k): v for k, v in sorted(self.widths.items())}, sort_keys=True),
            "characters": json.dumps(chars, sort_keys=True),
            "size_bytes": str(self.nbytes),
            "index": json.dumps(index, sort_keys=True),
        }
        write_safetensors(path, tensors, meta)
        return path

    @classmethod
    def load(cls, path: str | Path, lazy: bool = True) -> IdentityBank:
        """Open a saved bank. lazy: only the header is read now; tokens are read when a run asks for
        them. Raises BankFileError (damaged file) or ValueError (not a bank / newer format)."""
        path = Path(path)
        f = SafetensorsFile(path)
        meta = f.metadata
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path.name} is not an identity bank file (no '{FORMAT}' metadata)")
        try:
            version = int(meta.get("version", "0"))
        except ValueError:
            version = VERSION + 1
        if version > VERSION:
            raise ValueError(
                f"{path.name} was written by a newer version of the pack (format {meta.get('version')}); "
                "update the pack to read it"
            )
        try:
            dtype = getattr(torch, meta.get("dtype", "float16"), torch.float16)
            settings = (
                BankSettings.from_json(meta["settings"]) if version >= 2 else FULL
            )  # format 1: every step, fp16
            widths = {_parse_layer(k): v for k, v in json.loads(meta.get("widths", "{}")).items()}
            bank = cls(
                dtype=dtype,
                settings=settings,
                family=meta.get("family") or None,
                widths=widths,
                name=path.name,
            )
            bank._file = f
            if version >= 2:
                for c, info in json.loads(meta["characters"]).items():
                    if info.get("identity_images"):
                        bank.identity_images[c] = int(info["identity_images"])
                    bank.recorded_with[c] = BankSettings.from_json(json.dumps(info.get("settings", {})))
            for entry in json.loads(meta["index"]):
                if entry["tensor"] not in f.entries or (
                    entry.get("scale") and entry["scale"] not in f.entries
                ):
                    raise BankFileError(
                        f"{path.name} is damaged: tensor {entry['tensor']!r} of its index is missing"
                    )
                key = (entry["character"], int(entry["half"]), _layer_key(entry["layer"]))
                bank._store.setdefault(key, {})[float(entry["sigma"])] = (entry["tensor"], entry.get("scale"))
        except (KeyError, TypeError, ValueError, json.JSONDecodeError) as e:
            if isinstance(e, BankFileError):
                raise
            raise BankFileError(
                f"{path.name} is damaged: its identity bank metadata cannot be read ({type(e).__name__}: {e})"
            ) from None
        if not lazy:
            bank._store = {
                k: {s: bank._materialised(d) for s, d in v.items()} for k, v in bank._store.items()
            }
            bank._file = None
        return bank
