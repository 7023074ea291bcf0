"""Comic Page node: IMAGE batch + the Story Prompt's captions -> page IMAGE batch."""

import pytest
import torch

from pack_loader import submodule


@pytest.fixture(scope="module")
def comic(pack):
    return submodule("nodes.comic_page")


def panels(n, size=64):
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, size, size, 3, generator=g)


def test_story_captions_to_pages(comic, pack, tiny):
    story_prompt = submodule("nodes.story_prompt")
    _, clip, _ = tiny("sd15")
    text = "[Bob]: a man in a red jacket\n" + "\n".join(f"[Bob] scene {i} #Caption {i}" for i in range(6))
    *_, captions, count = story_prompt.StoryPrompt().encode(clip, text, story_prompt.NO_STYLE)
    (pages,) = comic.ComicPage().compose(panels(count), "four panel", "under", 256, 256, 8, 12, captions)
    assert pages.shape == (2, 256, 256, 3) and pages.dtype == torch.float32
    assert 0.0 <= pages.min() and pages.max() <= 1.0
    # page 2 holds panels 5-6 in its top row; its bottom row stays white
    assert torch.all(pages[1, 140:, :, :] == 1.0)
    assert not torch.all(pages[1, :120, :, :] == 1.0)


def test_panel_pixels_survive_the_round_trip(comic):
    image = torch.zeros(1, 32, 32, 3)
    image[..., 0] = 1.0  # pure red
    (pages,) = comic.ComicPage().compose(image, "single column", "none", 128, 128, 8, 12, "")
    red = (pages[0, ..., 0] > 0.99) & (pages[0, ..., 1] < 0.01)
    assert red.sum() > 90 * 90  # scaled up to the 112px cell, minus the frame


def test_grayscale_images_are_accepted(comic):
    (pages,) = comic.ComicPage().compose(
        torch.rand(2, 32, 32, 1), "classic strip", "over", 256, 128, 4, 10, "a\nb"
    )
    assert pages.shape == (1, 128, 256, 3)


def test_too_many_captions_name_the_node_and_the_fix(comic):
    with pytest.raises(comic.StoryError, match="Comic Page: 3 caption lines for 2 panels.*Story Prompt"):
        comic.ComicPage().compose(panels(2), "four panel", "under", 256, 256, 8, 12, "a\nb\nc")


def test_validation_rejects_a_page_without_room(comic):
    msg = comic.ComicPage.VALIDATE_INPUTS(page_width=128, page_height=128, margin=60)
    assert isinstance(msg, str) and msg.startswith("Comic Page:") and "margin" in msg
    assert comic.ComicPage.VALIDATE_INPUTS(page_width=1024, page_height=1024, margin=16) is True
