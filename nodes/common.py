"""Shared glue for the pack's nodes: category names and the user-facing error type."""

CATEGORY_ROOT = "storydiffusion"


class StoryError(ValueError):
    """An input problem the user can fix; the message names the node, the input and the fix."""


def sampler_time_error(node: str, problem: str, fix: str) -> StoryError:
    """An error found only when the sampler runs a patch of `node` (the latent batch is known only
    then). ComfyUI shows it on the sampler node, so the text sends the user to the pack's node."""
    return StoryError(f"{node}: {problem}. Fix it at the {node} node (this shows on the sampler because the "
                      f"sampler runs that node's patch): {fix}")


def check_step_window(node: str, start_percent: float, end_percent: float) -> None:
    """Raise a StoryError when a step window starts after it ends; call it when the node runs.

    One mistake, one message: ComfyUI attaches a VALIDATE_INPUTS error to every input the method
    takes, so a check of two inputs there would show twice. Each bound's range is checked by
    ComfyUI itself at queue time (the inputs' min/max); their order is checked here, once, before
    anything samples, and the message names start_percent as the input to change.
    """
    if float(start_percent) > float(end_percent):
        raise StoryError(f"{node}: start_percent ({start_percent}) is after end_percent ({end_percent}); lower "
                         f"start_percent (or raise end_percent) so that start ≤ end.")
