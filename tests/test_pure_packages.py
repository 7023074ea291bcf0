"""attention/, families/, motion/, story/ and story_world/ are pure: importable with no ComfyUI
module loaded."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

PROBE = r"""
import importlib, pkgutil, sys, types
root = sys.argv[1]
parent = types.ModuleType("pure_probe"); parent.__path__ = [root]; sys.modules["pure_probe"] = parent
names = []
for sub in ("attention", "families", "motion", "story", "story_world"):
    pkg = importlib.import_module("pure_probe." + sub)
    names.append(pkg.__name__)
    for info in pkgutil.iter_modules(pkg.__path__):
        names.append(importlib.import_module(f"pure_probe.{sub}.{info.name}").__name__)
host = sorted(
    m for m in sys.modules
    if m == "comfy" or m.startswith("comfy.") or m in ("nodes", "folder_paths", "server")
)
print(len(names), host)
"""


def test_pure_packages_import_without_comfyui():
    out = subprocess.run([sys.executable, "-c", PROBE, str(ROOT)], capture_output=True, text=True, check=True)
    count, host = out.stdout.strip().split(" ", 1)
    assert int(count) >= 4
    assert host == "[]", f"pure packages imported host modules: {host}"


def test_node_modules_stay_small():
    """nodes/ holds nodes and the thin patch installation: no file there over 250 lines."""
    long = {p.name: n for p in (ROOT / "nodes").glob("*.py") if (n := len(p.read_text().splitlines())) > 250}
    assert long == {}, f"nodes/ files over 250 lines: {long}"
