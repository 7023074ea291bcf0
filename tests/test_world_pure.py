"""The procedural story world (pure): drawing, captions, benchmark stories and the consistency metrics."""

import random

from pack_loader import pure

vocab = pure("story_world.vocabulary")
draw = pure("story_world.draw")
sampling = pure("story_world.sampling")
metrics = pure("story_world.metrics")
stories = pure("story_world.bench_stories")
syntax = pure("story.syntax")


def test_pictures_are_deterministic_sized_and_coloured_by_their_attributes():
    p, _ = sampling.dataset_item(5)
    a, b = draw.draw(p), draw.draw(p)
    assert a.size == (vocab.SIZE, vocab.SIZE) and a.tobytes() == b.tobytes()
    c = vocab.Character("girl", "red", "green", "plain", "left")
    d = vocab.Character("girl", "red", "blue", "plain", "left")
    img_c = draw.draw(vocab.Picture("beach", (c,), 1))
    img_d = draw.draw(vocab.Picture("beach", (d,), 1))
    assert img_c.tobytes() != img_d.tobytes()  # the shirt colour shows
    # nothing drawn on the empty right half differs
    assert img_c.crop((40, 0, 64, 64)).tobytes() == img_d.crop((40, 0, 64, 64)).tobytes()


def test_captions_name_only_true_attributes_and_omit_some():
    rng = random.Random(0)
    seen_short = False
    for i in range(300):
        p, cap = sampling.dataset_item(i)
        assert any(w in cap for w in vocab.SCENE_WORDS[p.scene]) or not any(
            w in cap for ws in vocab.SCENE_WORDS.values() for w in ws
        )
        for c in p.characters:
            assert f"a {c.kind}" in cap
            for colour in vocab.HAIR:
                if f"{colour} hair" in cap and len(p.characters) == 1:
                    assert colour == c.hair
        if len(p.characters) == 1 and "hair" not in cap:
            seen_short = True
    assert seen_short
    assert (
        sampling.describe(vocab.Character("boy", "white", "orange", "striped", "left"), rng)
        == "a boy with white hair and a striped orange shirt"
    )


def test_bench_stories_parse_with_the_story_prompt_syntax():
    for s in stories.ONE_CHARACTER:
        parsed = syntax.parse_story(s.text())
        assert len(parsed.panels) == len(s.scenes) and all(p.characters == (s.name,) for p in parsed.panels)
        assert len(syntax.parse_story(s.write_text()).panels) == 2
    for s in stories.TWO_CHARACTERS:
        parsed = syntax.parse_story(s.text())
        assert all(len(p.characters) == 2 for p in parsed.panels)
        assert "on the left and" in parsed.panels[0].prompt


def _read(kind, hair, shirt, pattern="plain", scene="beach", main="left", right=None):
    ch = {"kind": kind, "hair": hair, "shirt": shirt, "pattern": pattern, "p": 1.0}
    other = right or {"kind": "boy", "hair": "black", "shirt": "red", "pattern": "plain", "p": 0.0}
    chars = {"left": ch, "right": other} if main == "left" else {"right": ch, "left": other}
    return {"scene": scene, "count": 1, "characters": chars, "main": main}


def test_pair_agreement_and_scene_accuracy():
    same = [_read("girl", "red", "blue"), _read("girl", "red", "blue", main="right", scene="city")]
    assert metrics.pair_agreement(same) == {
        "all": 1.0,
        "attr": 1.0,
        "kind": 1.0,
        "hair": 1.0,
        "shirt": 1.0,
        "pattern": 1.0,
    }
    mixed = same + [_read("girl", "red", "green")]  # 3 pairs: one all-agree, two with 3/4 attributes
    r = metrics.pair_agreement(mixed)
    assert abs(r["all"] - 1 / 3) < 1e-9 and abs(r["attr"] - (1 + 0.75 + 0.75) / 3) < 1e-9
    assert r["hair"] == 1.0 and abs(r["shirt"] - 1 / 3) < 1e-9
    assert metrics.scene_accuracy(same, ["beach", "beach"]) == 0.5


def test_leakage_counts_crossed_attributes():
    left = {"kind": "boy", "hair": "red", "shirt": "blue"}
    right = {"kind": "girl", "hair": "yellow", "shirt": "green"}
    ok = {
        "scene": "beach",
        "count": 2,
        "main": "left",
        "characters": {
            "left": dict(left, pattern="plain", p=1.0),
            "right": dict(right, pattern="plain", p=1.0),
        },
    }
    swapped = {
        "scene": "beach",
        "count": 2,
        "main": "left",
        "characters": {
            "left": dict(left, hair="yellow", pattern="plain", p=1.0),
            "right": dict(right, pattern="plain", p=1.0),
        },
    }
    assert metrics.leakage([ok], left, right) == {"correct": 1.0, "leak": 0.0}
    r = metrics.leakage([ok, swapped], left, right)
    assert abs(r["leak"] - 1 / 12) < 1e-9 and abs(r["correct"] - 11 / 12) < 1e-9
