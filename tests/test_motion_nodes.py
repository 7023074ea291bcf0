"""Load Motion Predictor and Encode Frame Embeddings, and the loop they close: clips -> training ->
video conditioning."""

import logging

import pytest
import torch

from pack_loader import pure, submodule

pred = pure("motion.predictor")
weights = pure("motion.weights")
dataset = pure("motion.dataset")
train = pure("motion.train")


@pytest.fixture(scope="module")
def clip_vision():
    from tiny_models import factory

    return factory.tiny_clip_vision()


@pytest.fixture
def motion_folder(pack, tmp_path, monkeypatch):
    import folder_paths

    folder = tmp_path / "motion_predictor"
    folder.mkdir()
    monkeypatch.setitem(
        folder_paths.folder_names_and_paths, "motion_predictor", ([str(folder)], {".safetensors"})
    )
    return folder


@pytest.fixture
def output_dir(pack, tmp_path, monkeypatch):
    import folder_paths

    out = tmp_path / "output"
    out.mkdir()
    monkeypatch.setattr(folder_paths, "output_directory", str(out))
    return out


def _error():
    return submodule("nodes.common").StoryError


def test_motion_predictor_folder_is_registered_for_safetensors_only(pack):
    import folder_paths

    paths, exts = folder_paths.folder_names_and_paths["motion_predictor"]
    assert any(p.endswith("motion_predictor") for p in paths)
    assert exts == {".safetensors"}


def test_loader_lists_and_loads_predictors_but_hides_training_states(motion_folder):
    loader = submodule("nodes.motion_predictor_loader")
    model = pred.SemanticMotionPredictor(
        pred.PredictorConfig(embed_dim=1024, width=32, depth=1, heads=2, max_frames=8)
    )
    weights.save_predictor(model, motion_folder / "mine.safetensors")
    (motion_folder / "mine.train-state.safetensors").write_bytes(b"x")
    (motion_folder / "old.pt").write_bytes(b"x")
    assert loader.LoadMotionPredictor.INPUT_TYPES()["required"]["predictor_name"][0] == ["mine.safetensors"]
    (loaded,) = loader.LoadMotionPredictor().load("mine.safetensors")
    assert loaded.config.to_dict() == model.config.to_dict() and not loaded.training


@pytest.mark.parametrize(
    "content, fragment", [("pickle", "pickled"), ("mismatch", "do not match"), ("absent", "not in")]
)
def test_loader_errors_name_the_node_and_the_problem(motion_folder, content, fragment):
    import json

    from safetensors.torch import save_file

    loader = submodule("nodes.motion_predictor_loader")
    path = motion_folder / "bad.safetensors"
    if content == "pickle":
        torch.save({"a": torch.zeros(1)}, path)
    elif content == "mismatch":
        cfg = pred.PredictorConfig(embed_dim=16, width=32, depth=1, heads=2)
        sd = pred.SemanticMotionPredictor(cfg).state_dict()
        meta = {
            weights.KIND_KEY: weights.PREDICTOR_KIND,
            weights.CONFIG_KEY: json.dumps(dict(cfg.to_dict(), depth=2)),
        }
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata=meta)
    with pytest.raises(_error(), match=fragment) as e:
        loader.LoadMotionPredictor().load("bad.safetensors" if content != "absent" else "nope.safetensors")
    assert str(e.value).startswith("Load Motion Predictor:")


def test_encode_frame_embeddings_writes_a_training_file(clip_vision, output_dir):
    enc = submodule("nodes.frame_embeddings")
    frames = torch.rand(5, 48, 64, 3, generator=torch.Generator().manual_seed(0))
    out = enc.EncodeFrameEmbeddings().encode(clip_vision, frames, "motion_embeddings/walk", "center")
    path = out["result"][0]
    assert path.startswith(str(output_dir)) and path.endswith("_00001_.safetensors")
    (clip,) = dataset.load_clips([path])
    assert clip.shape == (5, 1024)
    assert torch.allclose(clip, clip_vision.encode_image(frames).image_embeds.detach(), atol=1e-5)
    second = enc.EncodeFrameEmbeddings().encode(clip_vision, frames, "motion_embeddings/walk", "none")[
        "result"
    ][0]
    assert second.endswith("_00002_.safetensors")


def test_encode_frame_embeddings_needs_three_frames(clip_vision, output_dir):
    enc = submodule("nodes.frame_embeddings")
    with pytest.raises(_error(), match="at least 3 frames"):
        enc.EncodeFrameEmbeddings().encode(clip_vision, torch.rand(2, 32, 32, 3), "x", "center")


def test_clips_to_predictor_to_transition(clip_vision, output_dir, motion_folder, caplog):
    """The user's loop: encode clips, train with the CLI, load the predictor, condition a transition."""
    enc = submodule("nodes.frame_embeddings")
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):  # three "clips": a colour fade with noise
        t = torch.linspace(0, 1, 8).view(-1, 1, 1, 1)
        a, b = torch.rand(1, 1, 1, 3, generator=gen), torch.rand(1, 1, 1, 3, generator=gen)
        frames = (a * (1 - t) + b * t + 0.05 * torch.rand(8, 32, 32, 3, generator=gen)).clamp(0, 1)
        enc.EncodeFrameEmbeddings().encode(clip_vision, frames, "motion_embeddings/fade", "center")
    out = motion_folder / "fades.safetensors"
    rc = train.main(
        [
            "--data",
            str(output_dir / "motion_embeddings"),
            "--out",
            str(out),
            "--steps",
            "4",
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
            "--no-progress",
            "--holdout",
            "0",
        ]
    )
    assert rc == 0
    (predictor,) = submodule("nodes.motion_predictor_loader").LoadMotionPredictor().load("fades.safetensors")
    node = submodule("nodes.story_transition").StoryTransitionSVD()
    from tiny_models import factory

    vae = factory.tiny_vae()
    panels = torch.rand(2, 64, 64, 3, generator=gen)
    assert predictor.metadata["interpolation"] == "linear"
    positive, _, _, total = node.encode(
        clip_vision, vae, panels, 64, 64, 6, "linear", 127, 6, 0.0, predictor=predictor
    )
    assert total == 6 and positive[0][0].shape == (6, 1, 1024)
    with caplog.at_level(logging.WARNING):
        node.encode(clip_vision, vae, panels, 64, 64, 6, "spherical", 127, 6, 0.0, predictor=predictor)
    assert "trained on linear interpolation" in caplog.text
    with pytest.raises(_error(), match="at most 6 frames"):
        node.encode(clip_vision, vae, panels, 64, 64, 7, "linear", 127, 6, 0.0, predictor=predictor)
