"""How identity bank tokens are stored: the size levers, 8-bit tokens, the bank file, the size formula.

* `BankSettings`: the levers of Identity Bank Write (recorded steps, bank keep-rate, precision,
  guidance halves, reading between recorded steps) and which steps / token positions a write
  run records.
* `Packed`: one [N, C] block of tokens as stored: fp16, or int8 with one float32 scale per token
  (symmetric, scale = max|x| / 127), so a token costs C + 4 bytes instead of 2C.
* `write_safetensors` / `SafetensorsFile`: the .safetensors container written with sorted keys
  and a fixed tensor order (the same bank gives the same bytes) and read one tensor at a time
  with plain file reads (opening a bank reads only its header; nothing is memory-mapped).
* `bank_bytes`: the size formula the Write node documents and the benchmark evaluates.
Pure torch + json, no ComfyUI import.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from .token_sampling import sample_token_indices

PRECISIONS = ("int8", "fp16")
HALVES = ("both", "cond only")
BETWEEN = ("nearest", "interpolate")
SCALE_BYTES = 4  # one float32 scale per int8 token
FIXED_POSITIONS = -1.0  # the "sigma" that seeds positions kept over all steps (interpolated banks)


@dataclass(frozen=True)
class BankSettings:
    """What a write run stores per identity image. Defaults: 5 steps in int8 with CSA's keep-rate and
    both halves, 1/12 of the full bank; on the tiny models the closest to the full bank's read
    of the levers' combinations of that size (bench/bench_bank.py)."""

    steps: int = 5  # recorded steps, spread evenly over the steps after warm-up; 0 = every step
    keep_rate: float = 0.0  # share of an identity image's tokens stored per layer; 0 = CSA's keep-rates
    precision: str = "int8"  # "int8" (per-token scale) or "fp16"
    halves: str = "both"  # "both" guidance halves, or "cond only" (the uncond half reads the cond tokens)
    between: str = "nearest"  # a read between recorded steps: "nearest" step, or "interpolate" in sigma

    def __post_init__(self):
        problems = []
        if not isinstance(self.steps, int) or self.steps < 0:
            problems.append(f"steps must be a whole number >= 0 (0 = every step), got {self.steps!r}")
        if not (isinstance(self.keep_rate, (int, float)) and 0.0 <= float(self.keep_rate) <= 1.0):
            problems.append(f"keep_rate must be within 0..1 (0 = CSA's keep-rates), got {self.keep_rate!r}")
        for field, value, allowed in (
            ("precision", self.precision, PRECISIONS),
            ("halves", self.halves, HALVES),
            ("between", self.between, BETWEEN),
        ):
            if value not in allowed:
                problems.append(f"{field} must be one of {', '.join(allowed)}, got {value!r}")
        if problems:
            raise ValueError("; ".join(problems))

    # ---- what a write run records --------------------------------------------------
    def records_step(self, step: int, total_steps: int, warmup: int = 0) -> bool:
        return self.steps == 0 or total_steps <= 0 or step in recorded_steps(total_steps, self.steps, warmup)

    def records_half(self, half) -> bool:
        return self.halves == "both" or int(half) == 0

    def rate(self, csa_rate: float) -> float:
        """The share stored at a resolution where CSA shares csa_rate (nothing where CSA shares nothing)."""
        if csa_rate <= 0:
            return 0.0
        return float(self.keep_rate) if self.keep_rate > 0 else float(csa_rate)

    def positions(
        self, images: int, tokens: int, csa_rate: float, seed: int, sigma: float
    ) -> torch.Tensor | None:
        """Per identity image the token positions to store, LongTensor [images, k] (None: store nothing).

        With "nearest" reads they are redrawn every step (seeded by its sigma; at the full bank's
        settings exactly the tokens CSA shares); with "interpolate" the same positions are kept over
        the steps, so blending two recorded steps blends the same tokens."""
        rate = self.rate(csa_rate)
        if rate <= 0:
            return None
        key = FIXED_POSITIONS if self.between == "interpolate" else float(sigma)
        idx = sample_token_indices(images, tokens, rate, seed, key)
        return idx if idx.shape[1] > 0 else None

    # ---- metadata ---------------------------------------------------------------------
    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> BankSettings:
        data = json.loads(text)
        return cls(
            **{k: data[k] for k in ("steps", "keep_rate", "precision", "halves", "between") if k in data}
        )

    def describe(self) -> str:
        steps = "every step" if self.steps == 0 else f"{self.steps} steps"
        rate = "CSA's keep-rate" if self.keep_rate == 0 else f"keep-rate {self.keep_rate:g}"
        halves = "both halves" if self.halves == "both" else "cond half only"
        return f"{steps}, {rate}, {self.precision}, {halves}, {self.between}"


FULL = BankSettings(steps=0, keep_rate=0.0, precision="fp16", halves="both", between="nearest")
DEFAULT = BankSettings()


def recorded_steps(total_steps: int, count: int, warmup: int = 0) -> tuple[int, ...]:
    """`count` step indices spread evenly over warmup..total_steps-1 (both ends included);
    every step when count is 0 or covers them all. Warm-up steps never read a bank."""
    first = min(max(0, int(warmup)), total_steps - 1)
    span = list(range(first, total_steps))
    if count <= 0 or count >= len(span):
        return tuple(range(total_steps)) if count <= 0 else tuple(span)
    if count == 1:
        return (span[len(span) // 2],)
    return tuple(sorted({span[round(i * (len(span) - 1) / (count - 1))] for i in range(count)}))


# ---- tokens as stored -----------------------------------------------------------------
@dataclass
class Packed:
    """[N, C] tokens as stored: fp16 `values`, or int8 `values` with a float32 `scale` [N]."""

    values: torch.Tensor
    scale: torch.Tensor | None = None

    @classmethod
    def pack(cls, tokens: torch.Tensor, precision: str) -> Packed:
        x = tokens.detach().to(device="cpu", dtype=torch.float32)
        if precision == "fp16":
            return cls(x.to(torch.float16).contiguous())
        amax = x.abs().amax(dim=1)
        scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
        q = torch.round(x / scale[:, None]).clamp_(-127, 127).to(torch.int8)
        return cls(q.contiguous(), scale.contiguous())

    def unpack(self, dtype: torch.dtype = torch.float16) -> torch.Tensor:
        if self.scale is None:
            return self.values if self.values.dtype == dtype else self.values.to(dtype)
        return (self.values.to(torch.float32) * self.scale[:, None]).to(dtype)

    @property
    def shape(self) -> tuple:
        return tuple(self.values.shape)

    @property
    def nbytes(self) -> int:
        n = self.values.numel() * self.values.element_size()
        return n + (self.scale.numel() * self.scale.element_size() if self.scale is not None else 0)


def token_bytes(width: int, precision: str) -> int:
    """Bytes of one stored token of `width` channels."""
    return int(width) + SCALE_BYTES if precision == "int8" else 2 * int(width)


def bank_bytes(
    layers, total_steps: int, settings: BankSettings, csa_rate: float = 0.5, warmup: int = 1, cfg: bool = True
) -> int:
    """Bytes one identity image adds to a bank: the formula the tiny models reproduce exactly.

    layers: (tokens N, width C) of each patched self-attention layer. Per identity image:
    recorded steps x halves x sum over layers of round(rate x N) x bytes per token, where
    bytes per token = 2C (fp16) or C + 4 (int8 + scale), halves = 2 with CFG unless "cond only".
    """
    from .token_sampling import tokens_to_keep

    steps = len(recorded_steps(total_steps, settings.steps, warmup))
    halves = 2 if cfg and settings.halves == "both" else 1
    rate = settings.rate(csa_rate)
    per_step = sum(tokens_to_keep(int(n), rate) * token_bytes(c, settings.precision) for n, c in layers)
    return steps * halves * per_step


# ---- the .safetensors container ---------------------------------------------------------
_DTYPES = {
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F32": torch.float32,
    "I8": torch.int8,
    "U8": torch.uint8,
    "I64": torch.int64,
}
_NAMES = {v: k for k, v in _DTYPES.items()}
MAX_HEADER = 512 * 2**20


class BankFileError(ValueError):
    """A bank file that cannot be read (damaged, truncated, not a .safetensors file)."""


def write_safetensors(path: str | Path, tensors: dict, metadata: dict[str, str]) -> int:
    """Write `tensors` (name -> CPU tensor) and string `metadata` as a .safetensors file whose bytes
    depend only on the contents: header keys sorted, data ordered by (alignment, name), written
    tensor by tensor into a temporary file that then replaces `path`. Returns the file size."""
    path = Path(path)
    order = sorted(tensors, key=lambda n: (-tensors[n].element_size(), n))
    header: dict[str, Any] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    for name in order:
        t = tensors[name]
        if t.dtype not in _NAMES:
            raise ValueError(f"cannot store dtype {t.dtype} ({name})")
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _NAMES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    raw = json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    raw += b" " * (-len(raw) % 8)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    try:
        with open(tmp, "wb") as f:
            f.write(struct.pack("<Q", len(raw)))
            f.write(raw)
            for name in order:
                t = tensors[name].detach().to("cpu").contiguous()
                f.write(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return 8 + len(raw) + offset


class SafetensorsFile:
    """A .safetensors file opened by its header only; `read(name)` reads one tensor from disk."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            self._open()
        except BankFileError as e:
            raise BankFileError(f"{self.path.name} is damaged or incomplete: {e}") from None

    def _open(self):
        try:
            stat = self.path.stat()
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise BankFileError("the file is shorter than a .safetensors header")
                (n,) = struct.unpack("<Q", head)
                if n > min(MAX_HEADER, stat.st_size - 8):
                    raise BankFileError(f"its header claims {n} bytes but the file has {stat.st_size}")
                header = json.loads(f.read(n).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise BankFileError(f"its header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise BankFileError("its header is not a JSON object")
        self.metadata: dict[str, str] = dict(header.pop("__metadata__", None) or {})
        self._data_start = 8 + n
        self._stamp = (stat.st_size, stat.st_mtime_ns)
        data_size = stat.st_size - self._data_start
        self.entries: dict[str, tuple] = {}
        for name, info in header.items():
            try:
                dtype = _DTYPES[info["dtype"]]
                shape = tuple(int(s) for s in info["shape"])
                begin, end = (int(o) for o in info["data_offsets"])
            except (KeyError, TypeError, ValueError):
                raise BankFileError(f"tensor {name!r} has an unreadable header entry") from None
            expected = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
            if not (0 <= begin <= end <= data_size) or end - begin != expected:
                raise BankFileError(f"tensor {name!r} lies outside the file (truncated?)")
            self.entries[name] = (dtype, shape, begin)

    @property
    def size(self) -> int:
        return self._stamp[0]

    def shape(self, name: str) -> tuple:
        return self.entries[name][1]

    def read(self, name: str) -> torch.Tensor:
        dtype, shape, begin = self.entries[name]
        stat = self.path.stat()
        if (stat.st_size, stat.st_mtime_ns) != self._stamp:
            raise BankFileError(f"{self.path.name} changed on disk after it was opened; load it again")
        itemsize = torch.empty((), dtype=dtype).element_size()
        buf = torch.empty(math.prod(shape) * itemsize, dtype=torch.uint8)
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            if buf.numel() and f.readinto(buf.numpy().data) != buf.numel():
                raise BankFileError(f"{self.path.name} ended early while reading {name!r}")
        return buf.view(dtype).reshape(shape)
