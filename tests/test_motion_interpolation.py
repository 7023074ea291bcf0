"""Interpolation of CLIP image embeddings (pure torch, no ComfyUI)."""

import math

import pytest
import torch

from pack_loader import pure

interp = pure("motion.interpolation")


def _pair(dim=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(dim, generator=g) * 3, torch.randn(dim, generator=g) * 5


@pytest.mark.parametrize("mode", interp.MODES)
def test_ends_are_exact_copies_and_length_is_frames(mode):
    a, b = _pair()
    seq = interp.interpolate(a, b, 7, mode)
    assert seq.shape == (7, 32)
    assert torch.equal(seq[0], a) and torch.equal(seq[-1], b)


def test_linear_is_evenly_spaced():
    a, b = _pair()
    seq = interp.interpolate(a, b, 5, "linear")
    assert torch.allclose(seq[2], (a + b) / 2, atol=1e-6)
    steps = seq[1:] - seq[:-1]
    assert torch.allclose(steps, steps[0].expand_as(steps), atol=1e-5)


def test_spherical_moves_on_the_great_circle_with_linear_norm():
    a, b = _pair()
    seq = interp.interpolate(a, b, 9, "spherical")
    t = torch.linspace(0, 1, 9)
    assert torch.allclose(seq.norm(dim=-1), a.norm() * (1 - t) + b.norm() * t, atol=1e-4)
    ua, ub = a / a.norm(), b / b.norm()
    omega = torch.arccos((ua * ub).sum())
    angles = torch.arccos((seq / seq.norm(dim=-1, keepdim=True) @ ua).clamp(-1, 1))
    assert torch.allclose(angles, t * omega, atol=1e-3)  # constant angular speed
    # stays in the plane of a and b
    basis = torch.linalg.qr(torch.stack([a, b], 1)).Q
    assert torch.allclose(basis @ (basis.T @ seq.T), seq.T, atol=1e-4)


def test_spherical_parallel_inputs_fall_back_to_linear_norm():
    a = torch.ones(8)
    seq = interp.interpolate(a, 3 * a, 5, "spherical")
    assert torch.allclose(seq, interp.interpolate(a, 3 * a, 5, "linear"), atol=1e-5)


@pytest.mark.parametrize("mode", interp.MODES)
def test_equal_ends_give_exact_copies(mode):
    a, _ = _pair()
    seq = interp.interpolate(a, a.clone(), 14, mode)
    assert all(torch.equal(row, a) for row in seq)


def test_batched_inputs():
    a = torch.randn(3, 16)
    b = torch.randn(3, 16)
    seq = interp.interpolate(a, b, 4, "spherical")
    assert seq.shape == (3, 4, 16)
    for i in range(3):
        assert torch.allclose(seq[i], interp.interpolate(a[i], b[i], 4, "spherical"), atol=1e-6)


@pytest.mark.parametrize("mode", interp.MODES)
def test_keyframe_chain_shares_join_frames(mode):
    keys = torch.randn(4, 16)
    positions = interp.chain_positions(4, 5)
    assert positions == [0, 4, 8, 12] and interp.chain_length(4, 5) == 13
    seq, mask = interp.interpolate_keyframes(keys, positions, mode)
    assert seq.shape == (13, 16)
    assert mask.tolist() == [i in positions for i in range(13)]
    for k, p in enumerate(positions):
        assert torch.equal(seq[p], keys[k])
    for k in range(3):  # each segment is the two-key interpolation
        assert torch.allclose(
            seq[positions[k] : positions[k + 1] + 1],
            interp.interpolate(keys[k], keys[k + 1], 5, mode),
            atol=0,
        )


def test_uneven_key_positions():
    keys = torch.randn(3, 8)
    seq, mask = interp.interpolate_keyframes(keys, [0, 2, 7], "linear")
    assert seq.shape == (8, 8) and mask.nonzero().flatten().tolist() == [0, 2, 7]
    assert torch.allclose(seq[1], (keys[0] + keys[1]) / 2, atol=1e-6)


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda: interp.interpolate(torch.zeros(4), torch.zeros(4), 1), "at least 2 frames"),
        (lambda: interp.interpolate(torch.zeros(4), torch.zeros(5), 3), "differ in shape"),
        (
            lambda: interp.interpolate(torch.zeros(4), torch.zeros(4), 3, "cubic"),
            "unknown interpolation mode",
        ),
        (lambda: interp.chain_positions(1, 4), "at least 2 key frames"),
        (lambda: interp.chain_positions(3, 1), "at least 2 frames"),
        (lambda: interp.interpolate_keyframes(torch.zeros(3, 4), [0, 2, 2]), "increase strictly"),
        (lambda: interp.interpolate_keyframes(torch.zeros(3, 4), [0, 2]), "key positions"),
    ],
)
def test_bad_arguments_are_clear_errors(call, fragment):
    with pytest.raises(interp.InterpolationError, match=fragment):
        call()


def test_no_nan_for_opposite_directions():
    a = torch.ones(6)
    seq = interp.interpolate(a, -a, 5, "spherical")
    assert torch.isfinite(seq).all()
    assert math.isclose(float(seq[0].norm()), float(a.norm()), rel_tol=1e-6)
