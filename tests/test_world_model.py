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
RATE = 0.6  # share of fully described panels that must show what the prompt says


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
    assert float((back - images).abs().mean()) < 0.05  # 0.031 measured on the shipped model (0.065 before)


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


@pytest.fixture(scope="module")
def prompt_hits(world):
    """Fully specified prompts, 2 seeds x 4 scenes: the share of panels whose read scene, and whose main
    character's read hair and shirt, are the prompt's."""
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
    return {k: v / n for k, v in hits.items()}


def test_the_model_draws_the_scene_the_prompt_says(prompt_hits):
    """The caption decides the scene (an eps-prediction model trained on white noise drew scenes at chance,
    20-30 %: it read the scene from its start noise; see the README)."""
    rates = prompt_hits
    assert rates["scene"] >= 0.75, rates


@pytest.mark.xfail(
    strict=True,
    reason="hair follows the prompt weakly: hair 12.5 %, shirt 62.5 % of these panels on the shipped model "
    "(README); turns XPASS once a longer-trained model draws them",
)
def test_the_model_draws_the_described_character(prompt_hits):
    """Fully specified prompts: the reader finds the described hair and shirt in most panels."""
    rates = prompt_hits
    assert rates["hair"] >= RATE and rates["shirt"] >= RATE, rates


def test_v_training_target_is_what_comfyuis_v_sampling_inverts():
    """The trainer's (input, target) pair, read by ComfyUI's V_PREDICTION model sampling as a sampler
    does (noised latent z0 + sigma*eps at sigma), gives back z0: same input scaling, same v convention."""
    import comfy.model_sampling

    train = submodule("world_model.training")
    build = submodule("world_model.build")
    sampling = build.build_unet(prediction="v").model_sampling
    assert isinstance(sampling, comfy.model_sampling.V_PREDICTION)
    g = torch.Generator().manual_seed(0)
    z0, eps = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0, 250, 700, 999])
    a = (1.0 / (1.0 + sampling.sigmas**2))[t].view(-1, 1, 1, 1)
    sigma = sampling.sigmas[t]
    noised = z0 + sigma.view(-1, 1, 1, 1) * eps  # what a sampler holds
    trainer_input = a.sqrt() * z0 + (1 - a).sqrt() * eps
    assert torch.allclose(sampling.calculate_input(sigma, noised), trainer_input, atol=1e-5)
    denoised = sampling.calculate_denoised(sigma, train.v_target(z0, eps, a), noised)
    assert torch.allclose(denoised, z0, atol=1e-4)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_the_file_says_what_the_model_predicts(tmp_path, prediction):
    import safetensors.torch

    import comfy.model_base

    build = submodule("world_model.build")
    model, clip, taesd = build.build_unet(), build.build_clip(), build.build_taesd()
    path = tmp_path / "w.safetensors"
    text = clip.cond_stage_model.clip_l.transformer
    build.save(path, model.diffusion_model, text, taesd, {}, prediction="eps")
    if prediction != "eps":  # rewrite the metadata only
        with safetensors.safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata(), prediction=prediction)
        safetensors.torch.save_file(safetensors.torch.load_file(str(path)), str(path), metadata=meta)
    if prediction == "x0":
        with pytest.raises(ValueError, match="unknown prediction type 'x0'"):
            build.load(path)
        return
    patcher, _, _ = build.load(path)
    expected = {"eps": comfy.model_base.ModelType.EPS, "v": comfy.model_base.ModelType.V_PREDICTION}
    assert patcher.model.model_type == expected[prediction]
