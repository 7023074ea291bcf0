"""The story world model as ComfyUI sees it: loaded by its node as MODEL, CLIP, VAE of ComfyUI's own
classes, with a VAE that round-trips world pictures, and a model that draws what a prompt says."""

from pathlib import Path

import pytest
import torch

import comfy.model_patcher
import comfy.sd
import comfy.utils

from pack_loader import load_pack, pure, submodule

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = ROOT / "models" / "story_world" / "story_world.safetensors"
READER = ROOT / "models" / "story_world" / "reader.safetensors"


@pytest.fixture(scope="module")
def world():
    load_pack()
    comfy.utils.PROGRESS_BAR_ENABLED = False
    ev = submodule("world_model.evaluation")
    model, clip, vae = ev.run_node("StoryDiffWorldModel", weights="story_world.safetensors")
    return ev, model, clip, vae, pure("story_world.reader").load(READER)


def test_shipped_weights_are_small_and_load_as_comfyui_objects(world):
    _, model, clip, vae, _ = world
    assert WEIGHTS.stat().st_size < 60e6
    assert isinstance(model, comfy.model_patcher.ModelPatcher) and isinstance(clip, comfy.sd.CLIP)
    assert isinstance(vae, comfy.sd.VAE)
    assert type(model.model.model_config).__name__ == "SD15"
    unet = model.model.diffusion_model
    assert len(unet.input_blocks) == 12 and len(unet.output_blocks) == 12  # SD1.5's block layout


def test_node_names_a_missing_file():
    load_pack()
    node = submodule("nodes.world_model_loader").StoryWorldModel()
    with pytest.raises(ValueError, match="not found.*train_world_model"):
        node.load("no_such_world.safetensors")


def test_thin_encoder_is_exactly_tae_sds_encoder():
    train = submodule("world_model.training")
    build = submodule("world_model.build")
    taesd = build.build_taesd()
    train.init_weights(taesd)
    train.thin_encoder_masks(taesd)
    x = torch.rand(2, 3, 64, 64)
    assert torch.allclose(train.thin_encode(taesd, x), taesd.taesd_encoder(x), atol=1e-5)


def test_vae_round_trips_world_pictures(world):
    _, _, _, vae, _ = world
    reader = pure("story_world.reader")
    sampling = pure("story_world.sampling")
    pics = [sampling.dataset_item(i, seed=77)[0] for i in range(8)]
    images = reader.to_tensor(pics).permute(0, 2, 3, 1)  # IMAGE layout [B,H,W,3]
    back = vae.decode(vae.encode(images))
    assert back.shape == images.shape
    assert float((back - images).abs().mean()) < 0.08  # 0.065 measured on the shipped model


def test_the_model_draws_characters_in_world_scenes(world):
    """Sampled panels are world pictures: the reader finds a character in most of them."""
    ev, model, clip, vae, reader_model = world
    read = pure("story_world.reader").read
    story = "[Ana]: a girl\n[Ana] on the beach\n[Ana] in the city\n[Ana] at night\n[Ana] in the forest"
    reads = [
        r
        for seed in (0, 1)
        for r in read(reader_model, ev.draw_story(model, clip, vae, story, seed, ev.Sampling()))
    ]
    assert sum(r["count"] >= 1 for r in reads) / len(reads) >= 0.75, [r["count"] for r in reads]


@pytest.mark.xfail(
    strict=True, reason="the shipped model follows its prompts weakly (README); turns XPASS once it does"
)
def test_the_model_draws_what_the_prompt_says(world):
    """Fully specified prompts: the reader finds the scene and the described hair and shirt in most panels."""
    ev, model, clip, vae, reader_model = world
    read = pure("story_world.reader").read
    story = (
        "[Ana]: a girl with yellow hair and a green shirt\n[Ana] on the beach\n[Ana] in the city\n"
        "[Ana] at night\n[Ana] in the forest"
    )
    scenes = ["beach", "city", "night", "forest"]
    hits = {"scene": 0, "hair": 0, "shirt": 0}
    n = 0
    for seed in (0, 1):
        images = ev.draw_story(model, clip, vae, story, seed, ev.Sampling(steps=16))
        for r, scene in zip(read(reader_model, images), scenes, strict=True):
            ch = r["characters"][r["main"]]
            hits["scene"] += r["scene"] == scene
            hits["hair"] += ch["hair"] == "yellow"
            hits["shirt"] += ch["shirt"] == "green"
            n += 1
    rates = {k: v / n for k, v in hits.items()}
    assert all(v >= 0.6 for v in rates.values()), rates
