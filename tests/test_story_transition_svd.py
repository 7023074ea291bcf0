"""Story Transition (SVD) on a tiny SVD-shaped model through real ComfyUI sampling.

The Done-when proofs: frame t's spatial cross-attention receives exactly embedding t, and
with start == end and no predictor the conditioning equals core SVD_img2vid_Conditioning's.
"""

import pytest
import torch

import comfy.sample
import comfy.utils

from pack_loader import pure, submodule

interp = pure("motion.interpolation")
pred = pure("motion.predictor")

SIZE = 64


@pytest.fixture(scope="module")
def svd(tiny):
    from tiny_models import factory

    model, _, vae = tiny("svd")
    return model, factory.tiny_clip_vision(), vae


@pytest.fixture(scope="module")
def node(pack):
    return submodule("nodes.story_transition")


def _story_error():
    return submodule("nodes.common").StoryError


def _images(n, seed=0, h=SIZE, w=SIZE):
    return torch.rand(n, h, w, 3, generator=torch.Generator().manual_seed(seed))


def _transition(node, clip_vision, vae, start, end=None, frames=3, mode="linear", **kw):
    args = dict(
        width=SIZE,
        height=SIZE,
        frames=frames,
        interpolation=mode,
        motion_bucket_id=127,
        fps=6,
        augmentation_level=0.0,
    )
    args.update(kw)
    return node.StoryTransitionSVD().encode(clip_vision, vae, start, end_image=end, **args)


def _sample(model, positive, negative, latent, steps=2, cfg=2.5):
    samples = latent["samples"]
    noise = torch.randn(samples.shape, generator=torch.Generator().manual_seed(7))
    return comfy.sample.sample(
        model, noise, steps, cfg, "euler", "karras", positive, negative, samples, seed=7
    )


def _capture_attn2(model, calls):
    """Clone with an attn2 patch recording, per call, whether it is spatial and the context it received."""

    def record(n, context, value, extra):
        h, w = extra["activations_shape"][-2:]
        spatial = n.shape[0] == extra["activations_shape"][0] and n.shape[1] == h * w
        calls.append(
            {
                "spatial": spatial,
                "block": extra["block"],
                "context": context.detach().clone(),
                "cond_or_uncond": list(extra["cond_or_uncond"]),
            }
        )
        return n, context, value

    m = model.clone()
    m.set_model_attn2_patch(record)
    return m


def test_frame_t_spatial_cross_attention_receives_exactly_embedding_t(svd, node):
    model, clip_vision, vae = svd
    panels = _images(3)
    positive, negative, latent, total = _transition(
        node, clip_vision, vae, panels, frames=3, mode="spherical"
    )
    assert total == 5 and latent["samples"].shape == (5, 4, SIZE // 8, SIZE // 8)
    # the embeddings the node must have produced, computed independently
    keys = torch.cat([clip_vision.encode_image(panels[i : i + 1]).image_embeds for i in range(3)]).detach()
    expected, mask = interp.interpolate_keyframes(keys, interp.chain_positions(3, 3), "spherical")
    assert torch.equal(positive[0][0], expected.unsqueeze(1))
    assert len({tuple(e.tolist()) for e in expected}) == 5  # five different per-frame embeddings

    calls = []
    _sample(_capture_attn2(model, calls), positive, negative, latent)
    spatial = [c for c in calls if c["spatial"]]
    temporal = [c for c in calls if not c["spatial"]]
    assert spatial and temporal
    assert len({c["block"] for c in spatial}) == 16  # every SVD transformer block, all levels
    frames = 5
    for c in spatial:
        ctx = c["context"]
        assert ctx.shape == (len(c["cond_or_uncond"]) * frames, 1, 1024)
        for chunk, label in enumerate(c["cond_or_uncond"]):
            rows = ctx[chunk * frames : (chunk + 1) * frames, 0]
            if label == 0:  # positive: frame t sees embedding t, bit for bit
                for t in range(frames):
                    assert torch.equal(rows[t], expected[t]), f"frame {t} at {c['block']}"
            else:
                assert torch.equal(rows, torch.zeros_like(rows))
    for c in temporal:  # temporal blocks see frame 0's context of their chunk, as in core SVD
        ctx = c["context"]
        per_chunk = ctx.shape[0] // len(c["cond_or_uncond"])
        for chunk, label in enumerate(c["cond_or_uncond"]):
            rows = ctx[chunk * per_chunk : (chunk + 1) * per_chunk, 0]
            want = expected[0] if label == 0 else torch.zeros(1024)
            assert torch.equal(rows, want.expand_as(rows))


@pytest.mark.parametrize("augmentation", [0.0, 0.25])
def test_start_equals_end_without_predictor_equals_core_svd_conditioning(svd, node, augmentation):
    import comfy_extras.nodes_video_model as core

    model, clip_vision, vae = svd
    image = _images(1, seed=3)
    frames = 4
    torch.manual_seed(11)  # core draws augmentation noise from the global generator; so does the node
    c_pos, c_neg, c_lat = core.SVD_img2vid_Conditioning().encode(
        clip_vision, image, vae, SIZE, SIZE, frames, 90, 8, augmentation
    )
    torch.manual_seed(11)
    o_pos, o_neg, o_lat, total = _transition(
        node,
        clip_vision,
        vae,
        image,
        image.clone(),
        frames=frames,
        motion_bucket_id=90,
        fps=8,
        augmentation_level=augmentation,
    )
    assert total == frames
    for ours, theirs in ((o_pos, c_pos), (o_neg, c_neg)):
        assert len(ours) == len(theirs) == 1
        # what the model sees: core's [1, 1, 1024] repeated to the frame batch vs ours [frames, 1, 1024]
        assert torch.equal(ours[0][0], comfy.utils.repeat_to_batch_size(theirs[0][0], frames))
        assert ours[0][1].keys() == theirs[0][1].keys()
        for k, v in theirs[0][1].items():
            assert torch.equal(ours[0][1][k], v) if torch.is_tensor(v) else ours[0][1][k] == v, k
    assert torch.equal(o_lat["samples"], c_lat["samples"])
    # and through real sampling the videos are bit-identical
    assert torch.equal(_sample(model, o_pos, o_neg, o_lat), _sample(model, c_pos, c_neg, c_lat))


def test_chain_of_panels_uses_each_transitions_start_panel_as_concat_image(svd, node):
    _, clip_vision, vae = svd
    panels = _images(3, seed=5)
    positive, _, _, total = _transition(node, clip_vision, vae, panels[:2], panels[2:], frames=3)
    concat = positive[0][1]["concat_latent_image"]
    assert total == 5 and concat.shape[0] == 5
    enc = [vae.encode(panels[i : i + 1]) for i in range(2)]
    for f, p in enumerate([0, 0, 1, 1, 1]):
        assert torch.equal(concat[f], enc[p][0])


def test_start_and_end_of_different_sizes_are_resized(svd, node):
    _, clip_vision, vae = svd
    start, end = _images(1, 1), _images(1, 2, h=48, w=96)
    positive, _, latent, total = _transition(node, clip_vision, vae, start, end, frames=4)
    assert latent["samples"].shape == (4, 4, SIZE // 8, SIZE // 8)
    assert positive[0][1]["concat_latent_image"].shape[-2:] == (SIZE // 8, SIZE // 8)
    assert torch.equal(positive[0][0][-1, 0], clip_vision.encode_image(end).image_embeds[0].detach())


def test_predictor_refines_inner_frames_and_untrained_one_changes_nothing(svd, node):
    _, clip_vision, vae = svd
    panels = _images(2, seed=9)
    plain = _transition(node, clip_vision, vae, panels, frames=6)[0][0][0]
    untrained = pred.SemanticMotionPredictor(
        pred.PredictorConfig(embed_dim=1024, width=32, depth=1, heads=2, max_frames=8)
    )
    assert torch.equal(
        _transition(node, clip_vision, vae, panels, frames=6, predictor=untrained)[0][0][0], plain
    )
    with torch.no_grad():
        untrained.proj_out.weight.normal_(0, 0.05)
    refined = _transition(node, clip_vision, vae, panels, frames=6, predictor=untrained)[0][0][0]
    assert torch.equal(refined[0], plain[0]) and torch.equal(refined[-1], plain[-1])  # key frames pinned
    assert not torch.allclose(refined[1:-1], plain[1:-1])


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        (dict(frames=1), "at least 2 frames"),
        (dict(end=None), "only one image"),
        (
            dict(
                predictor=pred.SemanticMotionPredictor(
                    pred.PredictorConfig(embed_dim=768, width=32, depth=1, heads=2)
                )
            ),
            "768-d embeddings",
        ),
        (
            dict(
                frames=9,
                predictor=pred.SemanticMotionPredictor(
                    pred.PredictorConfig(embed_dim=1024, width=32, depth=1, heads=2, max_frames=8)
                ),
            ),
            "at most 8 frames",
        ),
        (dict(interpolation="cubic"), "interpolation 'cubic'"),
    ],
)
def test_bad_inputs_are_clear_errors(svd, node, kwargs, fragment):
    _, clip_vision, vae = svd
    image = _images(1)
    kwargs = dict(kwargs)
    end = kwargs.pop("end", image)
    if "interpolation" in kwargs:
        kwargs["mode"] = kwargs.pop("interpolation")
    with pytest.raises(_story_error(), match=fragment) as e:
        _transition(node, clip_vision, vae, image, end, **kwargs)
    assert "Story Transition (SVD)" in str(e.value)


def test_frames_below_two_rejected_at_validation(node):
    assert "at least 2 frames" in node.StoryTransitionSVD.VALIDATE_INPUTS(frames=1)
    assert node.StoryTransitionSVD.VALIDATE_INPUTS(frames=14) is True
    assert node.StoryTransitionSVD.VALIDATE_INPUTS() is True  # a linked frames input is checked at run time
    assert "whole number" in node.StoryTransitionSVD.VALIDATE_INPUTS(frames="many")


def test_non_svd_model_is_named_with_the_fix(svd, node, tiny):
    _, clip_vision, vae = svd
    sd15_model = tiny("sd15")[0]
    image = _images(1)
    with pytest.raises(_story_error(), match="not Stable Video Diffusion.*Image Only Checkpoint Loader"):
        _transition(node, clip_vision, vae, image, image, model=sd15_model)
    _transition(node, clip_vision, vae, image, image, model=svd[0])  # the SVD model passes
    assert (
        "SVD" in node.StoryTransitionSVD.DESCRIPTION and "SD1.5/SDXL" in node.StoryTransitionSVD.DESCRIPTION
    )


def test_clip_vision_of_the_wrong_size_is_refused(node, svd, tmp_path):
    import json

    import comfy.clip_vision

    from tiny_models import factory

    config = json.loads(factory.TINY_CLIP_VISION_CONFIG.read_text())
    config["projection_dim"] = 768
    path = tmp_path / "vit_l_like.json"
    path.write_text(json.dumps(config))
    vit_l = comfy.clip_vision.ClipVisionModel(str(path))
    factory._seeded_init(vit_l.model, 1)
    image = _images(1)
    with pytest.raises(_story_error(), match="768-d embeddings; SVD needs 1024-d"):
        _transition(node, vit_l, svd[2], image, image)
