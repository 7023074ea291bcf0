"""Queue API-format workflows on a ComfyUI server and collect what they produce.

The same code serves the README's main job (scripts/run_story.py) and the live-server tests:
POST /prompt, follow progress over the websocket (falling back to polling /history), then
download every image the output nodes saved. A rejected prompt raises PromptRejected with the
server's own validation text; a failed run raises PromptFailed with the node and exception.
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

try:  # progress over the websocket when websocket-client is installed
    import websocket  # type: ignore
except ImportError:  # pragma: no cover - polling still works
    websocket = None


class PromptRejected(RuntimeError):
    """POST /prompt answered 400: the server's validation errors, in its own words."""

    def __init__(self, response: dict):
        self.response = response
        super().__init__(format_rejection(response))


class PromptFailed(RuntimeError):
    """The prompt was accepted but a node raised while executing."""


def format_rejection(response: dict) -> str:
    err = response.get("error", {})
    lines = [f"{err.get('message', 'prompt rejected')}: {err.get('details', '')}".rstrip(": ")]
    for node_id, info in (response.get("node_errors") or {}).items():
        for e in info.get("errors", []):
            lines.append(f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}")
    return "\n".join(lines)


def queue_prompt(server, prompt: dict, client_id: str) -> str:
    status, body = server.post("/prompt", {"prompt": prompt, "client_id": client_id, "prompt_id": str(uuid.uuid4())})
    if status != 200 or body.get("node_errors"):
        raise PromptRejected(body)
    return body["prompt_id"]


def _history_entry(server, prompt_id: str):
    return server.get(f"/history/{prompt_id}").get(prompt_id)


def _raise_if_failed(entry: dict, prompt_id: str) -> None:
    status = entry.get("status", {})
    if status.get("status_str") == "error":
        for event, data in status.get("messages", []):
            if event == "execution_error":
                raise PromptFailed(
                    f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                    f"{data.get('exception_type')}: {data.get('exception_message')}"
                )
        raise PromptFailed(f"prompt {prompt_id} failed: {status}")


def open_progress_socket(server, client_id: str):
    """The websocket for this client's progress messages, or None (then /history is polled)."""
    if websocket is None:
        return None
    try:
        return websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws?clientId={client_id}", timeout=5)
    except Exception:  # noqa: BLE001 - fall back to polling
        return None


def wait_for(server, prompt_id: str, ws=None, timeout: float = 1800, on_progress=None) -> dict:
    """Block until the prompt is done; return its /history entry. on_progress(node, value, max).

    `ws` is a socket opened (with open_progress_socket) *before* the prompt was queued, so no
    message is missed; it is closed here.
    """
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if ws is not None:
                try:
                    raw = ws.recv()
                except websocket.WebSocketTimeoutException:
                    raw = None
                if isinstance(raw, str):
                    msg = json.loads(raw)
                    data = msg.get("data", {})
                    if data.get("prompt_id") not in (None, prompt_id):
                        continue
                    if msg["type"] == "progress" and on_progress:
                        on_progress(data.get("node"), data.get("value"), data.get("max"))
                    elif msg["type"] == "execution_error":
                        raise PromptFailed(
                            f"node {data.get('node_id')} ({data.get('node_type')}) failed: "
                            f"{data.get('exception_type')}: {data.get('exception_message')}"
                        )
                    elif msg["type"] in ("execution_success", "execution_interrupted") or (
                        msg["type"] == "executing" and data.get("node") is None
                    ):
                        break
                    continue
            else:
                time.sleep(0.5)
            entry = _history_entry(server, prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and entry.get("status", {}).get("status_str"):
                break
        else:
            raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f}s")
    finally:
        if ws is not None:
            ws.close()
    for _ in range(40):  # history is written right after the last message
        entry = _history_entry(server, prompt_id)
        if entry and entry.get("status", {}).get("status_str"):
            _raise_if_failed(entry, prompt_id)
            return entry
        time.sleep(0.25)
    raise TimeoutError(f"prompt {prompt_id} finished but has no /history entry")


def download_images(server, entry: dict, dest: Path, prefix: str = "") -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    saved = []
    for node_id, output in entry.get("outputs", {}).items():
        for image in output.get("images", []):
            if image.get("type") != "output":
                continue
            query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
            target = dest / f"{prefix}{image['filename']}"
            target.write_bytes(server.get_bytes(f"/view?{query}"))
            saved.append(target)
    return saved


def text_progress(node, value, maximum, stream=sys.stderr) -> None:
    if not maximum:
        return
    width = 30
    done = int(width * value / maximum)
    stream.write(f"\r  node {node}: [{'#' * done}{'.' * (width - done)}] {value}/{maximum}")
    if value >= maximum:
        stream.write("\n")
    stream.flush()


def run_prompt(server, prompt: dict, timeout: float = 1800, on_progress=None) -> dict:
    client_id = str(uuid.uuid4())
    ws = open_progress_socket(server, client_id)
    try:
        prompt_id = queue_prompt(server, prompt, client_id)
    except Exception:
        if ws is not None:
            ws.close()
        raise
    return wait_for(server, prompt_id, ws, timeout=timeout, on_progress=on_progress)
