"""Consistency figures from read panels (pure): identity agreement, scene accuracy, isolation leakage."""

from __future__ import annotations

from itertools import combinations

from .vocabulary import CHARACTER_ATTRIBUTES


def pair_agreement(reads: list[dict], attributes=CHARACTER_ATTRIBUTES) -> dict:
    """Over all panel pairs of one story (the main character of each panel): the share of pairs whose
    attributes ALL agree ("all"), the mean share of agreeing attributes ("attr") and, per attribute,
    the share of pairs that agree on it."""
    chars = [r["characters"][r["main"]] for r in reads]
    pairs = list(combinations(chars, 2))
    if not pairs:
        raise ValueError("pair_agreement needs at least two panels")
    all_agree = sum(all(a[k] == b[k] for k in attributes) for a, b in pairs) / len(pairs)
    attr = sum(sum(a[k] == b[k] for k in attributes) / len(attributes) for a, b in pairs) / len(pairs)
    per = {k: sum(a[k] == b[k] for a, b in pairs) / len(pairs) for k in attributes}
    return {"all": all_agree, "attr": attr, **per}


def scene_accuracy(reads: list[dict], scenes: list[str]) -> float:
    if len(reads) != len(scenes):
        raise ValueError(f"{len(reads)} read panels for {len(scenes)} scenes")
    return sum(r["scene"] == s for r, s in zip(reads, scenes, strict=True)) / len(scenes)


def leakage(reads: list[dict], left: dict, right: dict) -> dict:
    """Two described characters (left, right: attribute -> value, values differing between them) in each
    panel. For each panel, side and described attribute: "correct" if read as described, "leak" if read
    as the OTHER character's value (the attribute crossed over). Rates over all (panel, side, attribute)."""
    checks = [k for k in left if k in right and left[k] != right[k]]
    if not checks:
        raise ValueError("leakage needs attributes described differently for the two characters")
    n = correct = leak = 0
    for r in reads:
        for side, own, other in (("left", left, right), ("right", right, left)):
            got = r["characters"][side]
            for k in checks:
                n += 1
                correct += got[k] == own[k]
                leak += got[k] == other[k]
    return {"correct": correct / n, "leak": leak / n}
