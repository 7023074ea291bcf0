"""Training the Semantic Motion Predictor (pure torch, CPU): it must beat the interpolation."""

import pytest
import torch

from pack_loader import pure

dataset = pure("motion.dataset")
train = pure("motion.train")
weights = pure("motion.weights")

FRAMES = 9


def _tiny_cfg(**kw):
    base = dict(
        steps=300,
        batch_size=32,
        lr=3e-3,
        warmup=20,
        min_frames=FRAMES,
        max_frames=FRAMES,
        max_stride=1,
        width=64,
        depth=2,
        heads=4,
        holdout=0.0,
        checkpoint_every=1000,
        eval_every=1000,
    )
    base.update(kw)
    return train.TrainConfig(**base)


@pytest.mark.slow
def test_tiny_predictor_beats_interpolation_on_heldout_trajectories(tmp_path):
    clips = dataset.synthetic_clips(512, FRAMES, 16, seed=1)
    heldout = dataset.synthetic_clips(128, FRAMES, 16, seed=2)  # never seen in training
    out = tmp_path / "tiny.safetensors"
    train.train(_tiny_cfg(), clips, out, progress=False, log=lambda s: None)
    model = weights.load_predictor(out)
    result = train.evaluate(model, heldout, FRAMES, "linear")
    print(
        f"\nheld-out relative error over {result['windows']} trajectories of {FRAMES} frames: "
        f"predictor {result['predictor']:.5f}, interpolation {result['interpolation']:.5f} "
        f"(ratio {result['predictor'] / result['interpolation']:.3f})"
    )
    assert result["interpolation"] > 0.03  # the synthetic motion is not linear
    assert result["predictor"] < 0.25 * result["interpolation"]


def test_interrupted_training_resumes_exactly(tmp_path):
    clips = dataset.synthetic_clips(64, 12, 8, seed=3)
    cfg = dict(
        steps=12,
        batch_size=8,
        width=32,
        depth=1,
        heads=2,
        min_frames=5,
        max_frames=8,
        max_stride=2,
        checkpoint_every=4,
        eval_every=6,
        holdout=0.25,
    )
    full = tmp_path / "full.safetensors"
    train.train(_tiny_cfg(**cfg), clips, full, progress=False, log=lambda s: None)

    def stop_at_7(step, loss):
        if step == 6:
            raise KeyboardInterrupt

    part = tmp_path / "part.safetensors"
    with pytest.raises(KeyboardInterrupt):
        train.train(_tiny_cfg(**cfg), clips, part, progress=False, on_step=stop_at_7, log=lambda s: None)
    state = train.state_path_for(part)
    assert weights.read_metadata(state)["step"] == "7"
    with pytest.raises(weights.MotionWeightsError, match="training-state file"):
        weights.load_predictor(state)
    logs = []
    train.train(_tiny_cfg(**cfg), clips, part, resume=state, progress=False, log=logs.append)
    assert any("resumed" in line and "step 7" in line for line in logs)
    a, b = weights.load_predictor(full).state_dict(), weights.load_predictor(part).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed training must repeat the uninterrupted run"


def test_cli_trains_on_embedding_files_with_progress_and_checkpoints(tmp_path, capsys):
    data = tmp_path / "clips"
    for i, clip in enumerate(dataset.synthetic_clips(6, 10, 12, seed=4)):
        dataset.save_frame_embeddings(clip, data / f"clip_{i}.safetensors", {"source": "synthetic"})
    (data / "notes.txt").write_text("ignored")
    out = tmp_path / "models" / "mine.safetensors"
    rc = train.main(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "6",
            "--batch-size",
            "4",
            "--width",
            "32",
            "--depth",
            "1",
            "--min-frames",
            "4",
            "--max-frames",
            "6",
            "--checkpoint-every",
            "3",
            "--eval-every",
            "3",
            "--holdout",
            "0.2",
        ]
    )
    assert rc == 0
    err = capsys.readouterr()
    assert "motion predictor" in err.err and "6/6" in err.err  # the tqdm bar
    assert "held-out error predictor" in err.out + err.err
    model = weights.load_predictor(out)
    assert model.config.embed_dim == 12 and model.config.max_frames == 6
    assert weights.read_metadata(out)["trained_steps"] == "6"
    assert train.state_path_for(out).is_file()
    rc = train.main(
        [
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            "8",
            "--resume",
            str(train.state_path_for(out)),
            "--no-progress",
        ]
    )
    assert rc == 0 and weights.read_metadata(out)["trained_steps"] == "8"


def test_bad_training_data_is_a_clear_error(tmp_path):
    with pytest.raises(dataset.MotionDataError, match="no such file"):
        dataset.load_clips([tmp_path / "absent"])
    dataset.save_frame_embeddings(torch.zeros(2, 4), tmp_path / "short.safetensors")
    with pytest.raises(dataset.MotionDataError, match="at least 3 frames"):
        dataset.load_clips([tmp_path])
    dataset.save_frame_embeddings(torch.zeros(5, 4), tmp_path / "a.safetensors")
    dataset.save_frame_embeddings(torch.zeros(5, 6), tmp_path / "b.safetensors")
    with pytest.raises(dataset.MotionDataError, match="different embedding sizes"):
        dataset.load_clips([tmp_path])
    with pytest.raises(dataset.MotionDataError, match="must be"):
        dataset.save_frame_embeddings(torch.zeros(5), tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="min_frames"):
        train.TrainConfig(min_frames=2).check()
