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

from isolated_helpers import encode_story, isolated, sample, state_of
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
        window = toks[i : i + len(name_ids)]
        if all(isinstance(t, int) and t == n for (t, _), n in zip(window, name_ids, strict=True)):
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
    assert state_of(m).run.result.maps is not None
    node = submodule("nodes.attention_masks").StoryAttentionMasks()
    latent = {"samples": torch.zeros(P, 4, 8, 8)}
    _, masks, _ = node.sample(
        model,
        embedding_clip,
        story,
        pos,
        neg,
        latent,
        seed=0,
        steps=2,
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
    assert masks.shape == (P * 2, 64, 64) and masks[0].any()


# ---- only the positions where the Story Prompt wrote the name (finding 10) ------------
def test_a_name_inside_another_characters_description_does_not_count(sd15_clip):
    text = "[Alice]: a woman, Bob's sister\n[Bob]: a man, blue coat\n[Alice] and [Bob] meet\n[Bob] waves"
    _, _, story, _ = encode_story(sd15_clip, text)
    plan = plan_mod.build_plan("test", sd15_clip, story)
    prompt = story.encoded_prompts[0]
    bobs = name_positions(sd15_clip, prompt, "Bob")
    assert len(bobs) == 2  # "Bob's" inside Alice's description, then the tag the story wrote
    assert plan.positions[0][1] == bobs[1]
    assert plan.positions[0][0] == name_positions(sd15_clip, prompt, "Alice")[0]
    assert plan.positions[1][1] == name_positions(sd15_clip, story.encoded_prompts[1], "Bob")[0]


@pytest.mark.parametrize("style", ["(No style)", "Photographic"])
def test_sub_word_names_take_every_sub_token_at_the_written_place(sd15_clip, style):
    text = "[Zorbulax Quen]: a tall alien, silver skin\n[Zorbulax Quen] waves at the camera"
    _, _, story, _ = encode_story(sd15_clip, text, style=style)
    plan = plan_mod.build_plan("test", sd15_clip, story)
    name_ids = [t for t, w in flat(sd15_clip, "Zorbulax Quen") if w]
    assert len(name_ids) >= 3  # really split into sub-words
    prompt = story.encoded_prompts[0]
    before = len([t for t, w in flat(sd15_clip, prompt[: prompt.index("Zorbulax")]) if w])
    want = list(range(1 + before, 1 + before + len(name_ids)))  # after BOS and the style's prefix
    assert plan.positions[0][0] == want
    toks = flat(sd15_clip, prompt)
    assert [toks[i][0] for i in want] == name_ids


def test_weighted_text_and_a_weighted_tag(sd15_clip):
    text = "[Bob]: a man, red jacket\n(masterpiece:1.2), ([Bob]:1.3) runs (through the rain:1.1)"
    _, _, story, _ = encode_story(sd15_clip, text)
    plan = plan_mod.build_plan("test", sd15_clip, story)
    prompt = story.encoded_prompts[0]
    assert prompt == "(masterpiece:1.2), (Bob, a man, red jacket:1.3) runs (through the rain:1.1)"
    toks = sd15_clip.tokenize(prompt, return_word_ids=True)["l"][0]
    bob = [t for t, w in flat(sd15_clip, "Bob") if w]
    masterpiece = [t for t, w in flat(sd15_clip, "masterpiece,") if w]
    pos = plan.positions[0][0]
    assert pos == [1 + len(masterpiece)] and [toks[i][0] for i in pos] == bob
    assert toks[pos[0]][1] == pytest.approx(1.3)  # the weight ComfyUI gives that token


def test_long_prompt_names_beyond_the_first_77_tokens(sd15_clip):
    filler = ", ".join(["a small wooden house with a red roof"] * 9)
    text = f"[Bob]: a man, red jacket\n{filler} and [Bob] in front of it"
    _, _, story, _ = encode_story(sd15_clip, text)
    plan = plan_mod.build_plan("test", sd15_clip, story)
    prompt = story.encoded_prompts[0]
    toks = flat(sd15_clip, prompt)
    assert len(toks) >= 154
    pos = plan.positions[0][0]
    assert len(pos) == 1 and pos[0] > 77 and toks[pos[0]][0] == [t for t, w in flat(sd15_clip, "Bob") if w][0]
    assert plan.lengths[0] == len(toks)
