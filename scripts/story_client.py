"""Queue API-format workflows on a ComfyUI server and collect what they produce.

The same code serves the README's main job (scripts/run_story.py), the live-server tests and
this command line:

    python scripts/story_client.py WORKFLOW.json --server http://127.0.0.1:8188 \
        --story "[Bob]: a man in a red jacket\n[Bob] at the station #Late again" \
        --seed 7 --ckpt sd_xl_base_1.0.safetensors --out comic/

POST /prompt, follow progress over the websocket (falling back to polling /history), then
download every file the output nodes saved. A rejected prompt raises PromptRejected with the
server's own validation text (the command prints it and exits 1); a failed run raises
PromptFailed with the node and exception. WORKFLOW.json is API format (the front end's
"Export (API)"), e.g. example_workflows/api/one_character_story.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.parse
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from comfy_host import HttpClient  # noqa: E402

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
            lines.append(
                f"  node {node_id} ({info.get('class_type')}): {e.get('message')}: {e.get('details')}"
            )
    return "\n".join(lines)


def queue_prompt(server, prompt: dict, client_id: str) -> str:
    status, body = server.post(
        "/prompt", {"prompt": prompt, "client_id": client_id, "prompt_id": str(uuid.uuid4())}
    )
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
        base = urllib.parse.urlsplit(server.url)
        scheme = "wss" if base.scheme == "https" else "ws"
        return websocket.create_connection(
            f"{scheme}://{base.netloc}{base.path.rstrip('/')}/ws?clientId={client_id}", timeout=5
        )
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
            if (
                entry
                and entry.get("status", {}).get("completed") is not None
                and entry.get("status", {}).get("status_str")
            ):
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
    for _node_id, output in entry.get("outputs", {}).items():
        for image in output.get("images", []):
            if image.get("type") != "output":
                continue
            query = urllib.parse.urlencode({k: image[k] for k in ("filename", "subfolder", "type")})
            target = dest / f"{prefix}{image['filename']}"
            target.write_bytes(server.get_bytes(f"/view?{query}"))
            saved.append(target)
    return saved


def download_outputs(server, entry: dict, dest: Path, prefix: str = "") -> list[Path]:
    """Every file the output nodes saved (images, animated images, videos, ...), into dest."""
    dest.mkdir(parents=True, exist_ok=True)
    saved = []
    for output in entry.get("outputs", {}).values():
        for items in output.values():
            for item in items if isinstance(items, list) else []:
                if not (isinstance(item, dict) and item.get("filename") and item.get("type") == "output"):
                    continue
                query = urllib.parse.urlencode(
                    {k: item.get(k, "") for k in ("filename", "subfolder", "type")}
                )
                target = dest / f"{prefix}{item['filename']}"
                target.write_bytes(server.get_bytes(f"/view?{query}"))
                saved.append(target)
    return saved


def text_progress(node, value, maximum, stream=None) -> None:
    if not maximum:
        return
    stream = stream or sys.stderr
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


# ---- parameters and the command line ------------------------------------------------------
class RemoteServer(HttpClient):
    """A running ComfyUI reached by URL, with the HTTP interface of comfy_host.ComfyServer."""


def load_workflow(path: Path) -> dict:
    """An API-format workflow; a UI-format one (front-end "Save") is refused with the fix."""
    data = json.loads(Path(path).read_text())
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise ValueError(
            f"{path} is a UI-format workflow (the front end's Save); queue its API twin instead: "
            "example_workflows/api/<name>.json, or use the front end's 'Export (API)'"
        )
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(n, dict) and "class_type" in n for n in data.values())
    ):
        raise ValueError(
            f"{path} is not an API-format workflow (an object of nodes with class_type and inputs)"
        )
    return data


def apply_parameters(
    workflow: dict,
    story: str = "",
    seed=None,
    ckpt: str = "",
    steps: int = 0,
    width: int = 0,
    height: int = 0,
) -> dict:
    """A copy of `workflow` with the story text, seed, checkpoint, steps and size applied.

    story: text, or the path of a file holding it. ckpt: a checkpoint file name as the server
    lists it (a path keeps only its name); it replaces the test-only tiny loader, and then steps
    and size default to 30 and 1024 when not given.
    """
    prompt = json.loads(json.dumps(workflow))
    if story and Path(story).is_file():
        story = Path(story).read_text()
    for node in prompt.values():
        ct, inputs = node["class_type"], node["inputs"]
        if ct == "StoryTestTinyCheckpoint" and ckpt:
            node["class_type"] = "CheckpointLoaderSimple"
            node["inputs"] = {"ckpt_name": Path(ckpt).name}
        elif ct == "CheckpointLoaderSimple" and ckpt:
            inputs["ckpt_name"] = Path(ckpt).name
        elif ct == "StoryDiffPrompt" and story:
            inputs["story"] = story
        elif ct in ("KSampler", "KSamplerAdvanced"):
            key = "seed" if ct == "KSampler" else "noise_seed"
            if seed is not None and not isinstance(inputs.get(key), list):
                inputs[key] = seed
            if steps or ckpt:
                inputs["steps"] = steps or 30
        elif ct == "EmptyLatentImage":
            for k, v in (("width", width), ("height", height)):
                if not isinstance(inputs.get(k), list) and (v or ckpt):
                    inputs[k] = v or 1024
    return prompt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="story_client.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("workflow", help="API-format workflow JSON")
    p.add_argument("--server", default="http://127.0.0.1:8188", help="ComfyUI URL (default %(default)s)")
    p.add_argument("--story", default="", help="story text, or a file holding it (default: the workflow's)")
    p.add_argument("--seed", type=int, default=None, help="sampler seed (default: the workflow's)")
    p.add_argument(
        "--ckpt", default="", help="checkpoint name as the server lists it (default: the workflow's loader)"
    )
    p.add_argument("--steps", type=int, default=0)
    p.add_argument("--width", type=int, default=0)
    p.add_argument("--height", type=int, default=0)
    p.add_argument("--out", default="output", help="folder for the downloaded outputs (default %(default)s)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait for the run")
    args = p.parse_args(argv)
    try:
        prompt = apply_parameters(
            load_workflow(Path(args.workflow)),
            args.story,
            args.seed,
            args.ckpt,
            args.steps,
            args.width,
            args.height,
        )
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    server = RemoteServer(args.server)
    try:
        server.get("/system_stats", timeout=10)
    except (OSError, ValueError) as e:
        print(
            f"error: no ComfyUI answers at {args.server} ({e}); start it (make serve) or pass --server URL",
            file=sys.stderr,
        )
        return 3
    try:
        entry = run_prompt(server, prompt, timeout=args.timeout, on_progress=text_progress)
    except PromptRejected as e:
        print(f"the server rejected the workflow:\n{e}", file=sys.stderr)
        return 1
    except (PromptFailed, TimeoutError) as e:
        print(f"the run failed: {e}", file=sys.stderr)
        return 1
    saved = download_outputs(server, entry, Path(args.out))
    if not saved:
        print("the workflow finished but saved nothing (add a Save Image node)", file=sys.stderr)
        return 1
    for path in saved:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
