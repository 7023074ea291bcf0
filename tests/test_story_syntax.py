"""The Story Prompt syntax (pure, no ComfyUI)."""

import pytest

from pack_loader import pure

syntax = pure("story.syntax")
styles = pure("story.styles")


def test_declarations_are_substituted_and_captions_split():
    story = syntax.parse_story(
        "[Bob]: a man in a red jacket\n[Alice]: a woman with silver hair\n\n"
        "[Bob] wakes up #Monday\n[Bob] and [alice] meet at the station\n[NC] an empty street #Night\n"
    )
    assert story.characters == {"Bob": "a man in a red jacket", "Alice": "a woman with silver hair"}
    assert [p.prompt for p in story.panels] == [
        "Bob, a man in a red jacket wakes up",
        "Bob, a man in a red jacket and Alice, a woman with silver hair meet at the station",
        "an empty street",
    ]
    assert story.tags == [["Bob"], ["Bob", "Alice"], []]
    assert story.captions == ["Monday", "", "Night"]
    assert [p.no_character for p in story.panels] == [False, False, True]
    assert [p.line for p in story.panels] == [4, 5, 6]


def test_typo_in_tag_names_the_line_and_the_declared_names():
    with pytest.raises(syntax.StorySyntaxError) as e:
        syntax.parse_story("[Bob]: a man\n[Bob] walks\n[Bbo] runs")
    msg = str(e.value)
    assert "line 3" in msg and "[Bbo]" in msg and "[Bob]" in msg


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("", "no panels"),
        ("[Bob]: a man", "no panels"),
        ("[Bob]:\n[Bob] walks", "without a description"),
        ("[Bob]: a\n[Bob]: b\n[Bob] walks", "declared twice"),
        ("[NC]: nobody\nx", "reserved"),
        ("[Bob]: a man\n[NC] [Bob] walks", "[NC]"),
        ("[Bob]: a man\n#only a caption", "no prompt text"),
        ("[]  walks", "inside the brackets"),
    ],
)
def test_bad_stories_are_clear_errors(text, fragment):
    with pytest.raises(syntax.StorySyntaxError) as e:
        syntax.parse_story(text)
    assert fragment in str(e.value)


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        # the declaration's name misses its ']': reported at the declaration, not as an unknown
        # tag on the next line
        (
            "[Bob: a man with black hair\n[Bob] wakes up\n[Bob] sleeps",
            1,
            "'[Bob: a man with black hair' has no closing ']'",
        ),
        (
            "[Bob]: a man\n[Alice : a woman\n[Bob] and [Alice] meet",
            2,
            "'[Alice : a woman' has no closing ']'",
        ),
        (
            "[Bob]: a man\n[Bob walks to work #Monday\n[Bob] sleeps",
            2,
            "'[Bob walks to work' has no closing ']'",
        ),
        ("[Bob]: a man\n[Bob] meets [Bob at noon", 2, "'[Bob at noon' has no closing ']'"),
    ],
)
def test_a_missing_closing_bracket_is_reported_at_its_own_line(text, line, fragment):
    with pytest.raises(syntax.StorySyntaxError) as e:
        syntax.parse_story(text)
    assert str(e.value).startswith(f"line {line}: ") and fragment in str(e.value), str(e.value)


def test_brackets_in_captions_are_free_text():
    story = syntax.parse_story("[Bob]: a man\n[Bob] walks #[sic")
    assert story.captions == ["[sic"]


def test_comment_lines_and_blank_lines_are_skipped():
    story = syntax.parse_story("// a comment\n\n  a lighthouse at dawn  \n")
    assert [p.prompt for p in story.panels] == ["a lighthouse at dawn"]
    assert story.tags == [[]]


def test_style_wraps_prompt_and_merges_negatives():
    pos, neg = styles.apply_style("Comic book", "a cat", "blurry")
    assert "a cat" in pos and pos.startswith("comic")
    assert neg.endswith("blurry") and "photograph" in neg
    assert styles.apply_style(styles.NO_STYLE, "a cat") == ("a cat", "")
    with pytest.raises(ValueError, match="choose one of"):
        styles.apply_style("Nope", "a cat")


def test_mentions_are_where_the_parser_wrote_each_name():
    story = syntax.parse_story(
        "[Alice]: a woman, Bob's sister\n[Bob]: a man\n[Alice] and  [Bob] meet\n[bob] waves"
    )
    p = story.panels[0]
    assert p.prompt == "Alice, a woman, Bob's sister and Bob, a man meet"
    assert p.mentions == (("Alice", 0), ("Bob", p.prompt.index("Bob, a man")))
    assert story.panels[1].mentions == (("Bob", 0),)
    assert syntax.parse_story("a lighthouse").panels[0].mentions == ()


def test_regional_prompt_texts():
    story = syntax.parse_story(
        "[Bob]: a man\n[Alice]: a woman\n[Bob] and [Alice] run through the rain\n"
        "[Alice], [Bob]: they talk #caption"
    )
    assert dict(story.panels[0].regional) == {
        "Bob": "Bob, a man and run through the rain",
        "Alice": "and Alice, a woman run through the rain",
    }
    assert dict(story.panels[1].regional) == {
        "Alice": "Alice, a woman: they talk",
        "Bob": "Bob, a man: they talk",
    }


@pytest.mark.parametrize(
    "text, line, fragment",
    [
        (
            "[Bob]: a man\n[Bob] wakes up\n[Bob walks to school",
            3,
            "'[Bob walks to school' has no closing ']'",
        ),
        ("[Bob]: a man\nBob] walks to school", 2, "']' without an opening '['"),
        ("[Bob: a man\n[Bob] walks to school", 1, "'[Bob: a man' has no closing ']'"),
    ],
)
def test_unclosed_tag_is_an_error_at_its_own_line(text, line, fragment):
    with pytest.raises(syntax.StorySyntaxError) as e:
        syntax.parse_story(text)
    assert str(e.value).startswith(f"line {line}:") and fragment in str(e.value), str(e.value)
