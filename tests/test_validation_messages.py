"""One mistake, one message (issue 14, item 7), through ComfyUI's own prompt validation.

ComfyUI attaches a custom-validation error to *every* input that a node's VALIDATE_INPUTS takes,
so a check that needs two inputs shows up twice (or three times). The pack validates each input
on its own at queue time (its own syntax, or ComfyUI's min/max), and checks that need two inputs
(a start after the end) once, when its node runs, naming the input at fault.
"""

import asyncio

import pytest
import torch

import execution

from consistent_inputs import CSA_DEFAULTS
from pack_loader import submodule

CSA = dict(CSA_DEFAULTS)
ISOLATED = dict(strength=1.1, reweight=1.0, start_percent=0.0, end_percent=1.0)
MASKS = dict(
    seed=0,
    steps=4,
    cfg=5.0,
    sampler_name="euler",
    scheduler="normal",
    layers="up, lowest resolution",
    start_percent=0.0,
    end_percent=1.0,
    blur=0.0,
    dilate=0,
    min_area=0.0,
)
LINK = {
    "model": ["2", 0],
    "clip": ["2", 1],
    "story": ["3", 2],
    "positive": ["3", 0],
    "negative": ["3", 1],
    "latent_image": ["4", 0],
}
LINKS = {
    "StoryDiffConsistentSelfAttention": ("model",),
    "StoryDiffIsolatedAttention": ("model", "clip", "story"),
    "StoryDiffAttentionMasks": ("model", "clip", "story", "positive", "negative", "latent_image"),
}
UPSTREAM = {
    "2": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "missing.safetensors"}},
    "3": {
        "class_type": "StoryDiffPrompt",
        "inputs": {"clip": ["2", 1], "story": "[Bob]: a man\n[Bob] runs", "style": "(No style)"},
    },
    "4": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
}


def validation_errors(pack, class_type, inputs):
    """The errors ComfyUI's validation reports on the node itself (its linked inputs come from a
    loader whose own failure is reported on the loader, not here)."""
    prompt = {
        "1": {"class_type": class_type, "inputs": dict(inputs, **{k: LINK[k] for k in LINKS[class_type]})},
        **UPSTREAM,
    }
    ok, errors, _ = asyncio.run(execution.validate_inputs("test", prompt, "1", {}))
    return errors


@pytest.mark.parametrize(
    "bad", [dict(apply_probability="0.7, 0.9"), dict(end_percent=120.0), dict(start_percent=-1.0)]
)
def test_consistent_attention_mistakes_are_one_message_when_the_node_runs(pack, tiny, bad):
    """Consistent Self-Attention's window inputs must also take release 0.1's percents (0-100), so
    its VALIDATE_INPUTS lifts ComfyUI's range check for them; then every check runs once when the
    node runs (a check in VALIDATE_INPUTS would show on every input it takes)."""
    assert validation_errors(pack, "StoryDiffConsistentSelfAttention", dict(CSA, **bad)) == []
    node = pack.NODE_CLASS_MAPPINGS["StoryDiffConsistentSelfAttention"]()
    with pytest.raises(submodule("nodes.common").StoryError) as e:
        node.patch(tiny("sd15")[0], **dict(CSA, **bad))
    assert f"{next(iter(bad))}" in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "class_type, inputs, bad",
    [
        ("StoryDiffIsolatedAttention", ISOLATED, dict(end_percent=1.5)),
        ("StoryDiffAttentionMasks", MASKS, dict(start_percent=-0.1)),
    ],
)
def test_a_window_input_out_of_range_is_one_message_on_that_input(pack, class_type, inputs, bad):
    errors = validation_errors(pack, class_type, dict(inputs, **bad))
    assert [e["extra_info"]["input_name"] for e in errors] == list(bad), errors


@pytest.mark.parametrize(
    "class_type, inputs, window",
    [
        ("StoryDiffConsistentSelfAttention", CSA, dict(start_percent=0.8, end_percent=0.2)),
        ("StoryDiffIsolatedAttention", ISOLATED, dict(start_percent=0.8, end_percent=0.2)),
        ("StoryDiffAttentionMasks", MASKS, dict(start_percent=0.8, end_percent=0.2)),
    ],
)
def test_a_start_after_the_end_is_one_message_naming_start_percent(pack, tiny, class_type, inputs, window):
    assert (
        validation_errors(pack, class_type, dict(inputs, **window)) == []
    )  # not two copies at queue time...
    model, clip, _ = tiny("sd15")
    from isolated_helpers import encode_story

    pos, neg, story, P = encode_story(clip)
    node = pack.NODE_CLASS_MAPPINGS[class_type]()
    args = dict(inputs, **window)
    run = {
        "StoryDiffConsistentSelfAttention": lambda: node.patch(model, **args),
        "StoryDiffIsolatedAttention": lambda: node.patch(model, clip, story, **args),
        "StoryDiffAttentionMasks": lambda: node.sample(
            model, clip, story, pos, neg, {"samples": torch.zeros(P, 4, 8, 8)}, **args
        ),
    }[class_type]
    # ...but once, when the node runs, before sampling
    with pytest.raises(submodule("nodes.common").StoryError) as e:
        run()
    assert "start_percent" in str(e.value) and "after end_percent" in str(e.value)


def test_batch_mismatch_raised_in_the_sampler_names_the_pack_node_to_fix(tiny):
    """The batch is known only when the sampler runs, so ComfyUI shows these errors on the KSampler;
    the message must send the user to the pack's node (and the latent) instead."""
    from isolated_helpers import encode_story, isolated, sample

    model, clip, _ = tiny("sd15")
    pos, neg, story, P = encode_story(clip)
    StoryError = submodule("nodes.common").StoryError
    with pytest.raises(StoryError) as e:
        sample(isolated(model, clip, story), pos, neg, 2, steps=1)
    msg = str(e.value)
    assert msg.startswith("Isolated Attention:") and "Fix it at the Isolated Attention node" in msg, msg
    assert "2 images" in msg and "3 panels" in msg and "panel_count" in msg and "batch_size" in msg
    bank = submodule("attention.identity_bank").IdentityBank()
    (m,) = submodule("nodes.identity_bank_nodes").IdentityBankRead().patch(model, bank, names="Bob")
    with pytest.raises(StoryError) as e:
        sample(m, pos, neg, 2, steps=1)
    assert "Fix it at the Identity Bank Read node" in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "class_type, bad",
    [
        ("StoryDiffConsistentSelfAttention", dict(keep_rate_1_16=float("nan"))),
        ("StoryDiffConsistentSelfAttention", dict(keep_rate_double=float("nan"))),
        ("StoryDiffConsistentSelfAttention", dict(strength=float("nan"))),
        ("StoryDiffIsolatedAttention", dict(strength=float("nan"))),
    ],
)
def test_a_nan_number_passes_the_queue_then_is_one_message_naming_the_input(pack, tiny, class_type, bad):
    """NaN passes ComfyUI's min/max check (every comparison with it is false) and acted as 0 (no
    sharing, silently): the node refuses it, naming the input."""
    inputs = {"StoryDiffConsistentSelfAttention": CSA, "StoryDiffIsolatedAttention": ISOLATED}[class_type]
    assert validation_errors(pack, class_type, dict(inputs, **bad)) == []
    model, clip, _ = tiny("sd15")
    node = pack.NODE_CLASS_MAPPINGS[class_type]()
    with pytest.raises(submodule("nodes.common").StoryError, match=f"{next(iter(bad))} is nan"):
        if class_type == "StoryDiffIsolatedAttention":
            from isolated_helpers import encode_story

            node.patch(model, clip, encode_story(clip)[2], **dict(inputs, **bad))
        else:
            node.patch(model, **dict(inputs, **bad))
