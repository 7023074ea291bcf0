"""Warnings a user should see on the canvas, not only in the server log: logged, and sent to the
browser that queued the prompt (web/js/warnings.js shows them as a toast naming the node)."""

from __future__ import annotations

import logging

EVENT = "storydiffusion.warning"


def warn(node: str, message: str, unique_id: str | None = None) -> None:
    logging.warning("%s", message)
    try:
        from server import PromptServer  # ComfyUI's server; absent when the nodes run outside it
    except ImportError:
        return
    instance = getattr(PromptServer, "instance", None)
    if instance is None:
        return
    try:
        instance.send_sync(
            EVENT,
            {"node": node, "node_id": unique_id, "message": message},
            getattr(instance, "client_id", None),
        )
    except Exception:  # noqa: BLE001 - a warning never breaks the run
        logging.debug("could not send the warning to the browser", exc_info=True)
