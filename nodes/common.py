"""Shared glue for the pack's nodes: category names and the user-facing error type."""

CATEGORY_ROOT = "storydiffusion"


class StoryError(ValueError):
    """An input problem the user can fix; the message names the node, the input and the fix."""


def check_step_window(node: str, start_percent: float, end_percent: float):
    """VALIDATE_INPUTS helper for a [start, end] window given as fractions of the steps.

    Naming these inputs in VALIDATE_INPUTS skips ComfyUI's own range check, so it is done here.
    Returns True or the error text ComfyUI shows before queueing.
    """
    for name, value in (("start_percent", start_percent), ("end_percent", end_percent)):
        if not 0.0 <= value <= 1.0:
            return f"{node}: {name} is {value}; use a fraction of the steps between 0 and 1."
    if start_percent > end_percent:
        return (
            f"{node}: start_percent ({start_percent}) is after end_percent ({end_percent}); make start ≤ end."
        )
    return True
