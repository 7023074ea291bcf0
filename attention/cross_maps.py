"""Cross-attention probability maps of chosen prompt tokens, accumulated over layers and steps.

Pure torch (no ComfyUI import). Used by the Story Attention Masks and Isolated Attention nodes
to locate each character in each panel from the model's own cross-attention (OIA §III-B).

Decisions (the paper leaves them open; see README "Object Isolated Attention: decided points"):

* **Character tokens**: every sub-token of the character's *name* where the Story Prompt wrote
  it for a tag (the glue picks those occurrences; a name inside another character's description
  does not count); for stories without that record, every occurrence of the name, else every
  sub-token of its description. Embedding vectors (`embedding:name`) compare by value.
  BOS/EOS/padding (word id 0 in ComfyUI's tokenizers) never count. The map of a character is the
  *mean* over its sub-tokens of the head-averaged attention probability.
* **Long prompts / tiled contexts**: CLIP contexts are 77-token windows concatenated for prompts
  over 75 tokens, and ComfyUI tiles every context of a batch (panels, positive vs negative) to
  the LCM of their lengths. The probability of original token j is the *sum* over the tiled
  copies j + r·L (L = the panel's own context length), so one selection matrix per panel
  (`selection_matrix`) folds tiling and averages sub-tokens in a single matmul.
* **Grid**: maps of every captured layer are resized bilinearly to one grid (the latent size)
  and averaged over layers; per step the mean over calls is kept, and masks use the mean over
  the steps so far (`MapAccumulator.mean(before_step)`), as the paper averages over steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_key(token):
    """A comparable key for one prompt token: the id of a vocabulary token, or the bytes of a
    textual-inversion vector (ComfyUI's tokenizer puts the embedding's vectors themselves in
    the token list for `embedding:name`), so the same embedding matches itself and never an id."""
    if torch.is_tensor(token):
        t = token.detach().float().cpu().contiguous()
        return ("vector", tuple(t.shape), t.numpy().tobytes())
    return int(token)


def find_phrase(prompt: list[tuple[int, int]], phrase: list[int]) -> list[int]:
    """Positions (in the flattened context) of every occurrence of `phrase` in `prompt`.

    prompt: (token, word_id) per context position, all 77-token windows concatenated;
    positions whose word_id is 0 (BOS, EOS, padding) are skipped, so a phrase may straddle
    a window boundary. phrase: the tokens to find (no special tokens). A token is an id or an
    embedding vector (tensor); they are compared by `token_key`.
    """
    return sorted({pos for occurrence in phrase_occurrences(prompt, phrase) for pos in occurrence})


def phrase_occurrences(prompt: list[tuple], phrase: list) -> list[list[int]]:
    """Each occurrence of `phrase` in `prompt` (same conventions as `find_phrase`), in order,
    as the list of its context positions."""
    if not phrase:
        return []
    kept = [(pos, token_key(tok)) for pos, (tok, word) in enumerate(prompt) if word != 0]
    ids = [tok for _, tok in kept]
    phrase = [token_key(t) for t in phrase]
    n = len(phrase)
    return [[kept[i + j][0] for j in range(n)] for i in range(len(ids) - n + 1) if ids[i : i + n] == phrase]


def selection_matrix(
    positions: list[list[list[int]]],
    lengths: list[int],
    context_len: int,
    dtype=torch.float32,
    device=None,
    period: int | None = None,
) -> torch.Tensor:
    """[P, T, K] weights mapping context columns to per-character map values.

    positions[p][k]: positions of character k's sub-tokens in panel p's own context (length
    lengths[p]); context_len T must be a multiple of every lengths[p] (ComfyUI tiles to the LCM).
    Column j + r·L gets 1/len(positions[p][k]) for every repetition r: summing over the copies
    gives the original token's probability, the 1/n averages over sub-tokens. An empty list
    (character not in that panel) gives an all-zero column. `period`: every panel's context was
    zero-padded on the right to `period` tokens (>= its length) before any tiling, so the copies
    recur every `period` columns and the padding is never selected.
    """
    P = len(positions)
    K = max((len(p) for p in positions), default=0)
    sel = torch.zeros(P, context_len, K, dtype=dtype, device=device)
    for p, chars in enumerate(positions):
        L = lengths[p] if period is None else period
        if context_len % L or lengths[p] > L:
            raise ValueError(
                f"context length {context_len} is not a multiple of panel {p}'s prompt length {L}"
            )
        for k, pos in enumerate(chars):
            if not pos:
                continue
            cols = torch.tensor([j + r * L for j in pos for r in range(context_len // L)], dtype=torch.long)
            sel[p, cols.to(sel.device), k] = 1.0 / len(pos)
    return sel


def head_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(q·kᵀ/√d) per head, in float32: [b, heads, n, T] from q [b, n, h·d], k [b, T, h·d]."""
    b, n, hd = q.shape
    d = hd // heads
    qh = q.reshape(b, n, heads, d).transpose(1, 2).float()
    kh = k.reshape(b, -1, heads, d).transpose(1, 2).float()
    return (qh @ kh.transpose(-1, -2) * d**-0.5).softmax(-1)


def head_mean_probs(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """Head-averaged attention probabilities [b, n, T]."""
    return head_probs(q, k, heads).mean(1)


def attend(probs: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The attention output [b, n, h·d] from per-head probabilities [b, h, n, T] and v [b, T, h·d]."""
    b, heads, n, T = probs.shape
    vh = v.reshape(b, T, heads, -1).transpose(1, 2).float()
    return (probs @ vh).transpose(1, 2).reshape(b, n, -1)


def character_maps(
    q: torch.Tensor,
    k: torch.Tensor,
    heads: int,
    sel: torch.Tensor,
    hw: tuple[int, int],
    probs: torch.Tensor | None = None,
) -> torch.Tensor:
    """[b, K, h, w] head-averaged maps of each row's characters (sel [P, T, K] from `selection_matrix`;
    b = a multiple of P: guidance chunks of P panels each). `probs` [b, n, T]: head-averaged
    probabilities already computed for q, k (else computed here)."""
    probs = head_mean_probs(q, k, heads) if probs is None else probs  # [b, n, T]
    if sel.shape[0] != probs.shape[0]:
        sel = sel.repeat(probs.shape[0] // sel.shape[0], 1, 1)
    maps = probs @ sel.to(probs.device, probs.dtype)  # [b, n, K]
    h, w = hw
    return maps.transpose(1, 2).reshape(maps.shape[0], maps.shape[2], h, w)


def resize_maps(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of [P, K, h, w] maps to the common grid (no-op when already there)."""
    if tuple(maps.shape[-2:]) == tuple(grid):
        return maps
    return F.interpolate(maps, size=tuple(grid), mode="bilinear", align_corners=False)


class MapAccumulator:
    """Per-step sums of resized maps; mean over layers within a step, then over steps.

    Kept per step (not only a running sum) so masks can be read for any prefix of the run
    (e.g. at 70 % and 100 % of the steps for the stability measurement).
    """

    def __init__(self, grid: tuple[int, int]):
        self.grid: tuple[int, int] = (int(grid[0]), int(grid[1]))
        self.sums: dict[int, torch.Tensor] = {}
        self.counts: dict[int, int] = {}

    def add(self, step: int, maps: torch.Tensor) -> None:
        maps = resize_maps(maps.float(), self.grid)
        if step in self.sums and self.sums[step].shape == maps.shape:
            self.sums[step] = self.sums[step] + maps
            self.counts[step] += 1
        else:
            self.sums[step] = maps.clone()
            self.counts[step] = 1

    @property
    def steps(self) -> list[int]:
        return sorted(self.sums)

    def mean(self, before_step: int | None = None) -> torch.Tensor | None:
        """Mean over the recorded steps < before_step (all when None) of each step's layer mean."""
        steps = [s for s in self.steps if before_step is None or s < before_step]
        if not steps:
            return None
        total: torch.Tensor | None = None
        for s in steps:
            m = self.sums[s] / self.counts[s]
            total = m if total is None else total + m
        assert total is not None  # steps is not empty
        return total / len(steps)
