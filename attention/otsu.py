"""Otsu binarisation of cross-attention maps and the coefficient-of-variation overlap rule.

Pure torch (no ComfyUI import). `otsu_threshold` reproduces scikit-image's `threshold_otsu`
(256-bin histogram with numpy's bin assignment, threshold = centre of the bin maximising the
between-class variance) on the tensor's own device, so no per-step GPU->CPU copy of the maps
is needed; tests compare it with scikit-image on random maps.

Decisions (paper: "Otsu per character; on overlap the map with the lower coefficient of
variation wins"):

* A map is min-max normalised, optionally blurred, then thresholded: pixels strictly above
  the Otsu threshold are the character's region (scikit-image's convention `image > t`).
* A flat map (max - min below 1e-12, e.g. a character absent from the panel) gives an empty
  mask, never an error.
* Coefficient of variation σ/μ is measured on the character's (normalised) map *inside its
  own Otsu mask*; an overlapping pixel goes to the character with the lowest CV among those
  claiming it. The result is disjoint by construction.
* Post-processing: dilation (square max-pool of radius r) before the overlap rule, then a
  minimum area (fraction of the grid): a smaller region is dropped (treated as absent).
* Thin evidence: Otsu returns a region for any non-flat map, noise included. `otsu_separation`
  (Otsu's η, between-class over total variance) measures how clearly a map splits in two; a
  map below `min_separation` gives an empty mask (Gaussian noise ≈ 0.64, a blob ≈ 0.95+).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FLAT_EPS = 1e-12


def otsu_threshold(x: torch.Tensor, nbins: int = 256) -> torch.Tensor | None:
    """Otsu threshold of all values of x (float64 scalar tensor), None for a flat input."""
    v = x.detach().reshape(-1).double()
    lo, hi = v.min(), v.max()
    if (hi - lo).item() <= 0:
        return None
    edges = torch.linspace(lo.item(), hi.item(), nbins + 1, dtype=torch.float64, device=v.device)
    idx = ((v - lo) * (nbins / (hi - lo))).long().clamp_(0, nbins - 1)
    idx = idx - (v < edges[idx]).long()  # numpy's histogram corrections at bin edges
    idx = idx + ((v >= edges[idx + 1]) & (idx != nbins - 1)).long()
    counts = torch.bincount(idx, minlength=nbins).double()
    centers = (edges[:-1] + edges[1:]) / 2
    w1 = counts.cumsum(0)
    w2 = counts.flip(0).cumsum(0).flip(0)
    m1 = (counts * centers).cumsum(0) / w1
    m2 = ((counts * centers).flip(0).cumsum(0) / w2.flip(0)).flip(0)
    var = w1[:-1] * w2[1:] * (m1[:-1] - m2[1:]) ** 2
    var = torch.nan_to_num(var, nan=-1.0)
    return centers[int(torch.argmax(var))]


def otsu_separation(x: torch.Tensor, nbins: int = 256) -> float:
    """Otsu's effectiveness η = σ_B² / σ_T² of the values of x at the Otsu threshold, in [0, 1]:
    how well two classes explain the map. A clean blob on a background gives η near 1, unimodal
    noise about 0.64 (Gaussian) to 0.75 (uniform); a flat map gives 0."""
    v = x.detach().reshape(-1).double()
    t = otsu_threshold(v, nbins)
    total = v.var(unbiased=False)
    if t is None or total.item() <= 0:
        return 0.0
    above = v > t
    w1 = above.double().mean()
    if w1.item() in (0.0, 1.0):
        return 0.0
    between = w1 * (1 - w1) * (v[above].mean() - v[~above].mean()) ** 2
    return float(between / total)


def normalise(m: torch.Tensor) -> torch.Tensor | None:
    """Min-max to [0, 1]; None when flat."""
    lo, hi = m.min(), m.max()
    if (hi - lo).item() <= FLAT_EPS:
        return None
    return (m - lo) / (hi - lo)


def gaussian_blur(m: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of a [H, W] map (reflect padding); sigma in grid pixels."""
    if sigma <= 0:
        return m
    r = max(1, int(3 * sigma + 0.5))
    t = torch.arange(-r, r + 1, dtype=m.dtype, device=m.device)
    g = torch.exp(-(t**2) / (2 * sigma**2))
    g = g / g.sum()
    x = m[None, None]
    pad_h, pad_w = min(r, m.shape[0] - 1), min(r, m.shape[1] - 1)
    x = F.pad(x, (pad_w, pad_w, pad_h, pad_h), mode="reflect" if min(pad_h, pad_w) > 0 else "replicate")
    kh = g[r - pad_h : r + pad_h + 1].view(1, 1, -1, 1)
    kw = g[r - pad_w : r + pad_w + 1].view(1, 1, 1, -1)
    x = F.conv2d(F.conv2d(x, kh / kh.sum()), kw / kw.sum())
    return x[0, 0]


def binarize(m: torch.Tensor, blur: float = 0.0) -> torch.Tensor:
    """Boolean Otsu mask of one [H, W] map; all False for a flat map."""
    n = normalise(m.float())
    if n is None:
        return torch.zeros(m.shape, dtype=torch.bool, device=m.device)
    n = gaussian_blur(n, blur)
    t = otsu_threshold(n)
    if t is None:
        return torch.zeros(m.shape, dtype=torch.bool, device=m.device)
    return n.double() > t


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    if radius <= 0:
        return mask
    x = mask.float()[None, None]
    return F.max_pool2d(x, 2 * radius + 1, stride=1, padding=radius)[0, 0] > 0


def coefficient_of_variation(m: torch.Tensor, mask: torch.Tensor) -> float:
    """σ/μ of the normalised map inside its own mask (whole map if the mask is empty)."""
    n = normalise(m.float())
    if n is None:
        return float("inf")
    vals = n[mask] if bool(mask.any()) else n.reshape(-1)
    mu = vals.mean()
    if mu.item() <= 0:
        return float("inf")
    return float(vals.std(unbiased=False) / mu)


def resolve_overlaps(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Disjoint masks [K, H, W]: overlap pixels go to the claimant with the lowest CV."""
    K = maps.shape[0]
    if K < 2:
        return masks.clone()
    cv = torch.tensor([coefficient_of_variation(maps[k], masks[k]) for k in range(K)], device=maps.device)
    big = torch.full_like(cv, float("inf"))
    score = torch.where(masks, cv.view(K, 1, 1).expand_as(masks), big.view(K, 1, 1).expand_as(masks))
    winner = score.argmin(0)  # ties: lowest character index
    keep = torch.zeros_like(masks)
    keep.scatter_(0, winner[None], True)
    return masks & keep


def separates(m: torch.Tensor, min_separation: float, blur: float = 0.0) -> bool:
    """Whether map m (normalised and blurred as `binarize` does) splits clearly into two classes."""
    n = normalise(m.float())
    return n is not None and otsu_separation(gaussian_blur(n, blur)) >= min_separation


def panel_masks(
    maps: torch.Tensor,
    present: list[bool] | None = None,
    blur: float = 0.0,
    dilate_radius: int = 0,
    min_area: float = 0.0,
    min_separation: float = 0.0,
) -> torch.Tensor:
    """Final disjoint boolean masks [K, H, W] of one panel from its maps [K, H, W].

    Characters not present in the panel (present[k] False) get empty masks, and so does a
    character whose map does not split into two classes clearly (`otsu_separation` below
    min_separation: Otsu finds a region in any non-flat map, noise included).
    """
    K = maps.shape[0]
    present = list(present) if present is not None else [True] * K
    if min_separation > 0:
        present = [bool(present[k]) and separates(maps[k], min_separation, blur) for k in range(K)]
    masks = torch.stack(
        [
            binarize(maps[k], blur)
            if present[k]
            else torch.zeros(maps.shape[1:], dtype=torch.bool, device=maps.device)
            for k in range(K)
        ]
    )
    masks = torch.stack([dilate(masks[k], dilate_radius) for k in range(K)]) if K else masks
    masks = resolve_overlaps(maps, masks)
    if min_area > 0:
        area = masks.flatten(1).float().mean(1)
        masks = masks & (area >= min_area).view(K, 1, 1)
    return masks


def masks_to_tokens(masks: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """Resize masks [..., H, W] (bool or float) to a block's token grid and flatten: [..., h·w].

    Nearest-neighbour on the *exact* block size (activations_shape, e.g. 10x14 latents give
    5x7, 3x4, 2x2 blocks: sizes round up), so token t = row·w + col lines up with the block's
    own flattening. Binary masks stay binary.
    """
    lead = masks.shape[:-2]
    x = masks.float().reshape(-1, 1, *masks.shape[-2:])
    if tuple(x.shape[-2:]) != tuple(hw):
        x = F.interpolate(x, size=tuple(hw), mode="nearest-exact")
    out = x.reshape(*lead, hw[0] * hw[1])
    return out > 0.5 if masks.dtype == torch.bool else out
