"""The Semantic Motion Predictor and its weights files (pure torch, no ComfyUI)."""

import json
import struct

import pytest
import torch

from pack_loader import pure

interp = pure("motion.interpolation")
pred = pure("motion.predictor")
weights = pure("motion.weights")

TINY = pred.PredictorConfig(embed_dim=24, width=32, depth=2, heads=4, max_frames=16)


def _trained_like(seed=0, config=TINY):
    """A predictor whose output head is no longer zero (as after training)."""
    torch.manual_seed(seed)
    m = pred.SemanticMotionPredictor(config)
    with torch.no_grad():
        m.proj_out.weight.normal_(0, 0.1)
        m.proj_out.bias.normal_(0, 0.1)
        m.mix_query.weight.normal_(0, 0.1)
    return m.eval()


@pytest.mark.parametrize("mode", interp.MODES)
def test_untrained_predictor_is_exactly_the_interpolation(mode):
    m = pred.SemanticMotionPredictor(TINY).eval()
    keys = torch.randn(3, 24) * 7
    positions = interp.chain_positions(3, 6)
    seq, _ = interp.interpolate_keyframes(keys, positions, mode)
    out = m.predict(keys, positions, mode)
    assert torch.equal(out, seq)
    batch = torch.randn(5, 9, 24)
    mask = interp.key_mask([0, 8], 9)
    assert torch.equal(m(batch, mask), batch)


def test_key_frames_stay_pinned_and_inner_frames_move_when_trained():
    m = _trained_like()
    keys = torch.randn(2, 24) * 4
    out = m.predict(keys, [0, 9], "linear")
    seq, _ = interp.interpolate_keyframes(keys, [0, 9], "linear")
    assert torch.equal(out[0], keys[0]) and torch.equal(out[-1], keys[1])
    assert (out[1:-1] - seq[1:-1]).abs().max() > 1e-3


def test_output_is_scale_equivariant():
    m = _trained_like()
    seq = interp.interpolate(torch.randn(24), torch.randn(24), 8)[None]
    mask = interp.key_mask([0, 7], 8)
    assert torch.allclose(m(seq * 50, mask), m(seq, mask) * 50, rtol=1e-4, atol=1e-4)


def test_frame_position_and_keyframe_embeddings_matter():
    m = _trained_like()
    seq = interp.interpolate(torch.randn(24), torch.randn(24), 8)[None]
    a = m(seq, interp.key_mask([0, 7], 8))
    b = m(seq, interp.key_mask([0, 3, 7], 8))
    assert not torch.allclose(a[0, 1], b[0, 1])  # key-frame indicator changes the prediction


@pytest.mark.parametrize(
    "seq, mask, fragment",
    [
        (torch.zeros(1, 4, 20), torch.tensor([1, 0, 0, 1]), "embed_dim 24"),
        (
            torch.zeros(1, 17, 24),
            torch.zeros(17).bool().index_fill(0, torch.tensor([0]), True),
            "max_frames 16",
        ),
        (torch.zeros(1, 4, 24), torch.zeros(4), "at least one key frame"),
        (torch.zeros(4, 24), torch.tensor([1, 0, 0, 1]), "batch, frames, dim"),
    ],
)
def test_bad_inputs_are_clear_errors(seq, mask, fragment):
    with pytest.raises(ValueError, match=fragment):
        pred.SemanticMotionPredictor(TINY)(seq, mask)


def test_config_validation():
    with pytest.raises(pred.PredictorConfigError, match="not divisible"):
        pred.PredictorConfig(width=30, heads=4)
    with pytest.raises(pred.PredictorConfigError, match="unknown keys"):
        pred.PredictorConfig.from_dict({"embed_dim": 8, "layers": 3})
    assert pred.PredictorConfig.from_dict(TINY.to_dict()) == TINY
    assert pred.suggested_heads(256) == 4 and pred.suggested_heads(96) == 1


def test_weights_round_trip(tmp_path):
    m = _trained_like(3)
    path = weights.save_predictor(m, tmp_path / "p.safetensors", {"note": "x"})
    loaded = weights.load_predictor(path)
    assert loaded.config == TINY and not loaded.training
    keys = torch.randn(2, 24)
    assert torch.equal(loaded.predict(keys, [0, 7]), m.predict(keys, [0, 7]))
    assert weights.read_metadata(path)["note"] == "x"


def test_pickles_are_refused(tmp_path):
    m = pred.SemanticMotionPredictor(TINY)
    for name in ("p.pt", "p.ckpt", "p.pth", "p.bin"):
        torch.save(m.state_dict(), tmp_path / name)
        with pytest.raises(weights.MotionWeightsError, match="pickled checkpoints .* refused"):
            weights.load_predictor(tmp_path / name)
    disguised = tmp_path / "disguised.safetensors"
    torch.save(m.state_dict(), disguised)
    with pytest.raises(weights.MotionWeightsError, match="pickled .* renamed"):
        weights.load_predictor(disguised)
    with pytest.raises(weights.MotionWeightsError, match="must be saved as .safetensors"):
        weights.load_predictor(tmp_path / "p.onnx")
    with pytest.raises(weights.MotionWeightsError, match="only"):
        weights.save_predictor(m, tmp_path / "out.pt")


def test_mismatched_or_foreign_files_are_clear_errors(tmp_path):
    from safetensors.torch import save_file

    m = pred.SemanticMotionPredictor(TINY)
    sd = {k: v.contiguous() for k, v in m.state_dict().items()}
    bigger = dict(TINY.to_dict(), width=64, heads=4)
    save_file(
        sd,
        str(tmp_path / "shape.safetensors"),
        metadata={weights.KIND_KEY: weights.PREDICTOR_KIND, weights.CONFIG_KEY: json.dumps(bigger)},
    )
    with pytest.raises(weights.MotionWeightsError, match="do not match the stored config.*shape mismatch"):
        weights.load_predictor(tmp_path / "shape.safetensors")

    partial = {k: v for k, v in sd.items() if not k.startswith("blocks.1.")}
    save_file(
        partial,
        str(tmp_path / "missing.safetensors"),
        metadata={weights.KIND_KEY: weights.PREDICTOR_KIND, weights.CONFIG_KEY: json.dumps(TINY.to_dict())},
    )
    with pytest.raises(weights.MotionWeightsError, match="missing"):
        weights.load_predictor(tmp_path / "missing.safetensors")

    save_file(sd, str(tmp_path / "noconfig.safetensors"))
    with pytest.raises(weights.MotionWeightsError, match="not a motion predictor file"):
        weights.load_predictor(tmp_path / "noconfig.safetensors")

    save_file(
        sd,
        str(tmp_path / "badconfig.safetensors"),
        metadata={weights.KIND_KEY: weights.PREDICTOR_KIND, weights.CONFIG_KEY: json.dumps({"width": -1})},
    )
    with pytest.raises(weights.MotionWeightsError, match="stored predictor config is invalid"):
        weights.load_predictor(tmp_path / "badconfig.safetensors")

    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(struct.pack("<Q", 10**9) + b"{}")
    with pytest.raises(weights.MotionWeightsError, match="bad header"):
        weights.load_predictor(junk)
    with pytest.raises(weights.MotionWeightsError, match="no such file"):
        weights.load_predictor(tmp_path / "absent.safetensors")


def test_header_length_that_looks_like_a_pickle_opcode_still_loads(tmp_path):
    """A safetensors header length whose first byte is 0x80 (pickle's PROTO opcode) is a valid file."""
    m = pred.SemanticMotionPredictor(TINY)
    for pad in range(400):
        path = weights.save_predictor(m, tmp_path / f"p{pad}.safetensors", {"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
        path.unlink()
    else:
        pytest.fail("no padding gave a 0x80 first byte")
    assert weights.load_predictor(path).config.to_dict() == TINY.to_dict()


def test_mixing_head_moves_frames_within_the_key_frames_span():
    torch.manual_seed(1)
    m = pred.SemanticMotionPredictor(TINY).eval()
    with torch.no_grad():
        m.mix_query.weight.normal_(0, 0.3)  # proj_out stays zero: only the mixing head acts
    keys = torch.randn(2, 24) * 3
    out = m.predict(keys, [0, 7])
    seq, _ = interp.interpolate_keyframes(keys, [0, 7])
    delta = (out - seq)[1:-1]
    assert delta.abs().max() > 1e-3
    basis = torch.linalg.qr(keys.T).Q  # [24, 2]
    assert torch.allclose(delta @ basis @ basis.T, delta, atol=1e-5)
