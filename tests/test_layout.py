"""Pack layout and registry metadata (what ComfyUI-Manager and the Comfy Registry read)."""

import ast
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_root_init_only_exports_the_mappings():
    tree = ast.parse((ROOT / "__init__.py").read_text())
    assigned = set()
    for node in tree.body:
        if isinstance(node, ast.Assign):
            assigned |= {t.id for t in node.targets if isinstance(t, ast.Name)}
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.Expr)) and not (
            isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        ):
            raise AssertionError(f"__init__.py does work at import time: {ast.dump(node)[:80]}")
    assert assigned == {"WEB_DIRECTORY", "__all__"}


def test_pyproject_registry_metadata_mirrors_requirements():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    for key in ("name", "version", "description", "license"):
        assert project.get(key), key
    assert isinstance(project.get("dependencies"), list), "dependencies must be declared (even when empty)"
    assert comfy["PublisherId"] and comfy["DisplayName"]
    assert comfy["requires-comfyui"].startswith(">=")
    reqs = [
        line.strip()
        for line in (ROOT / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert sorted(project["dependencies"]) == sorted(reqs)
    assert not any(r.split(">")[0].split("=")[0].strip().lower() == "torch" for r in reqs)


def test_top_level_layout():
    for path in (
        "__init__.py",
        "nodes",
        "attention",
        "motion",
        "web",
        "example_workflows",
        "tests",
        "requirements.txt",
        "pyproject.toml",
        "bench",
        "README.md",
        ".ci/run",
    ):
        assert (ROOT / path).exists(), path
