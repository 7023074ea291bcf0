"""Where each character's tokens sit in each panel's prompt, through ComfyUI's real tokenizers.

The attention nodes find a character by the token positions of its name in the panel's encoded
prompt. These tests pin those positions for real prompts (sub-word names, weighted text, long
prompts over 77 tokens, textual-inversion embeddings) instead of checking properties that hold by
construction.
"""

import pytest
import safetensors.torch
import torch

import folder_paths
from oia_helpers import encode_story, isolated, sample, state_of
from pack_loader import submodule
from tiny_models import factory

plan_mod = submodule("nodes.character_plan")


def flat(clip, text):
    """(token, word id) of every context position, all 77-token windows concatenated."""
    return plan_mod._flat_tokens(clip, text)


def name_positions(clip, text, name):
    """Positions of `name`'s own tokens in `text` when tokenized alone, by explicit search."""
    name_ids = [t for t, w in flat(clip, name) if w != 0]
    toks = flat(clip, text)
    out = []
    for i in range(len(toks) - len(name_ids) + 1):
        window = toks[i:i + len(name_ids)]
        if all(isinstance(t, int) and t == n for (t, _), n in zip(window, name_ids)):
            out.append(list(range(i, i + len(name_ids))))
    return out


@pytest.fixture(scope="module")
def sd15_clip(tiny):
    return tiny("sd15")[1]


# ---- textual-inversion embeddings (issue 10, finding 4) ------------------------------
@pytest.fixture(scope="module")
def embedding_clip(tmp_path_factory):
    """A tiny SD1.5 CLIP whose tokenizer looks embeddings up in ComfyUI's own 'embeddings' folders,
    as CheckpointLoaderSimple builds it, with a 3-vector textual inversion 'bobface' there."""
    folder = tmp_path_factory.mktemp("embeddings")
    vectors = torch.randn(3, 768, generator=torch.Generator().manual_seed(7)) * 0.02
    safetensors.torch.save_file({"emb_params": vectors}, str(folder / "bobface.safetensors"))
    folder_paths.add_model_folder_path("embeddings", str(folder))
    clip = factory.tiny_clip("sd15", embedding_directory=folder_paths.get_folder_paths("embeddings"))
    return clip


EMBED_STORY = """[Bob]: embedding:bobface a man, red jacket
[Alice]: a woman, green dress
[Bob] waits at a bus stop
[Alice] reads in a library
[Bob] and [Alice] walk in a park"""


def test_embedding_tokens_are_loaded_by_comfyui(embedding_clip):
    toks = flat(embedding_clip, "Bob, embedding:bobface a man")
    assert sum(1 for t, _ in toks if torch.is_tensor(t)) == 3  # the file was found and expanded


def test_textual_inversion_in_a_description_works_in_isolated_attention_and_masks(tiny, embedding_clip):
    model = tiny("sd15")[0]
    pos, neg, story, P = encode_story(embedding_clip, EMBED_STORY)
    plan = plan_mod.build_plan("test", embedding_clip, story)
    # Bob's name tokens, not the embedding vectors that follow it
    text = story.encoded_prompts[0]
    assert plan.positions[0][0] == name_positions(embedding_clip, text, "Bob")[0]
    m = isolated(model, embedding_clip, story)
    out = sample(m, pos, neg, P, steps=2, size=(8, 8))
    assert torch.isfinite(out).all()
    assert state_of(m).run.result["maps"] is not None
    node = submodule("nodes.attention_masks").StoryAttentionMasks()
    latent = {"samples": torch.zeros(P, 4, 8, 8)}
    _, masks, _ = node.sample(model, embedding_clip, story, pos, neg, latent, seed=0, steps=2, cfg=5.0,
                              sampler_name="euler", scheduler="normal", layers="up, lowest resolution",
                              start_percent=0.0, end_percent=1.0, blur=0.0, dilate=0, min_area=0.0)
    assert masks.shape == (P * 2, 64, 64) and masks[0].any()
