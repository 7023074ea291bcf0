"""The mask preview's legend: under each panel, its number and each character's colour and name."""

import torch

from pack_loader import pure

legend = pure("story.mask_legend")
RED, BLUE = (0.95, 0.26, 0.21), (0.13, 0.59, 0.95)


def _has_colour(img: torch.Tensor, colour, tol=0.02) -> bool:
    return bool(((img - torch.tensor(colour)).abs().max(-1).values < tol).any())


def test_each_preview_gets_a_band_with_the_panel_number_and_each_characters_swatch():
    P, H, W = 3, 64, 256
    preview = torch.full((P, H, W, 3), 0.12)
    out = legend.with_legend(
        preview, ["Bob", "Alice"], [RED, BLUE], [[True, False], [False, True], [True, True]]
    )
    band = legend.legend_height(W)
    assert out.shape == (P, H + band, W, 3)
    assert torch.equal(out[:, :H], preview)  # the masks themselves are untouched
    bands = out[:, H:]
    # a filled swatch for a character in the panel; only its outline when absent
    filled = [
        [((b - torch.tensor(c)).abs().max(-1).values < 0.01).sum().item() for c in (RED, BLUE)] for b in bands
    ]
    assert filled[2][0] > 20 and filled[2][1] > 20
    assert filled[0][0] > filled[0][1] and filled[1][1] > filled[1][0]
    assert _has_colour(bands[0], BLUE) and _has_colour(bands[1], RED)  # outlines of the absent ones
    # the panel numbers differ: so do the bands where they are written
    assert not torch.equal(bands[0], bands[2]) and (bands[0] - bands[1]).abs().sum() > 0
    assert (bands.max(-1).values > 0.85).any()  # light text on the dark band


def test_legend_scales_with_the_image_width():
    assert legend.legend_height(1024) > legend.legend_height(128) >= 18
