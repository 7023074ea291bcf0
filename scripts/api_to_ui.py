"""API-format workflows -> UI-format workflows (what the front end's "Save" writes), with a thumbnail.

    .venv/bin/python scripts/api_to_ui.py            # every example_workflows/api/<name>.json
    .venv/bin/python scripts/api_to_ui.py --check    # exit 1 when a UI workflow means another graph
    .venv/bin/python scripts/api_to_ui.py --server http://127.0.0.1:8188 my_api.json --out my_ui.json

For each example_workflows/api/<name>.json this writes example_workflows/<name>.json (listed by
ComfyUI's /workflow_templates, opened from the template browser) and example_workflows/<name>.jpg
(the browser's thumbnail: a drawing of the graph). Node definitions (widget order, slot types,
seed "control after generate" widgets) come from /object_info of a live server: --server URL, or a
temporary headless ComfyUI with the pack (scripts/comfy_host.py). Test-only nodes (StoryTestTiny*)
become the core loader with the same outputs (e.g. CheckpointLoaderSimple) so a user's ComfyUI has
every node. Each workflow gets a note on the canvas: example_workflows/api/<name>.md when present,
else one written from the graph. Nodes are laid out left to right by dependency depth.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.request
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from workflow_graph import convert, graph_meaning, meaning_differences  # noqa: E402
from workflow_thumbnail import draw_thumbnail  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "example_workflows"
API_DIR = EXAMPLES / "api"


def fetch_object_info(server_url: str | None) -> dict:
    if server_url:
        with urllib.request.urlopen(server_url.rstrip("/") + "/object_info", timeout=60) as r:
            return json.loads(r.read())
    from comfy_host import temporary_server

    with temporary_server(with_tiny_models=True) as server:
        return server.get("/object_info")


def note_for(api_path: Path) -> str | None:
    md = api_path.with_suffix(".md")
    return md.read_text().strip() if md.is_file() else None


def build(api_path: Path, object_info: dict) -> dict:
    api = json.loads(api_path.read_text())
    name = api_path.stem
    return convert(
        api,
        object_info,
        note=note_for(api_path),
        workflow_id=str(uuid.uuid5(uuid.NAMESPACE_URL, f"storydiffusion/{name}")),
    )


def stale_reasons(target: Path, built: dict) -> list[str]:
    """Why the UI workflow at `target` is not the twin of `built` (empty when it is). Compared by
    graph meaning (nodes, links, widget values), so the check holds on any host: positions,
    sizes and titles follow the host's display names and sockets."""
    if not target.is_file():
        return ["missing"]
    found = json.loads(target.read_text())
    reasons = meaning_differences(graph_meaning(built), graph_meaning(found))
    if not target.with_suffix(".jpg").is_file():
        reasons.append(f"no thumbnail {target.with_suffix('.jpg').name}")
    return reasons


def heading(api_path: Path) -> str:
    return api_path.stem.replace("_", " ").capitalize()


def dump(workflow: dict) -> str:
    return json.dumps(workflow, indent=1, ensure_ascii=False) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "api", nargs="*", help="API-format workflows (default: every example_workflows/api/*.json)"
    )
    p.add_argument(
        "--server", default="", help="a running ComfyUI with the pack (default: start a temporary one)"
    )
    p.add_argument("--out", default="", help="output file, with a single input workflow")
    p.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 when a UI workflow's nodes, links or widget values differ from its API "
        "twin",
    )
    args = p.parse_args(argv)

    sources = [Path(a) for a in args.api] or sorted(API_DIR.glob("*.json"))
    if args.out and len(sources) != 1:
        p.error("--out needs exactly one input workflow")
    info = fetch_object_info(args.server or None)
    stale = []
    for src in sources:
        target = Path(args.out) if args.out else EXAMPLES / f"{src.stem}.json"
        built = build(src, info)
        if args.check:
            reasons = stale_reasons(target, built)
            if reasons:
                stale.append(
                    f"{target}: "
                    + "; ".join(reasons[:5])
                    + (f" (+{len(reasons) - 5} more)" if len(reasons) > 5 else "")
                )
            continue
        text = dump(built)
        target.write_text(text)
        draw_thumbnail(json.loads(text), heading(src)).save(target.with_suffix(".jpg"), quality=88)
        print(f"wrote {target} and {target.with_suffix('.jpg').name}")
    if stale:
        print(
            "out of date (run .venv/bin/python scripts/api_to_ui.py):\n  " + "\n  ".join(map(str, stale)),
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
