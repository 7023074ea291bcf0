"""Shared glue for the pack's nodes: category names and the user-facing error type."""

CATEGORY_ROOT = "storydiffusion"


class StoryError(ValueError):
    """An input problem the user can fix; the message names the node, the input and the fix."""
