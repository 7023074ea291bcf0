"""Type-check the pure packages with mypy (run by `make test`): attention/, families/, motion/, story/.

The pack is a package whose modules import each other relatively (families/ -> ../attention), and
its folder may have any name, so mypy sees it through a symlink named `storydiffusion` in a
temporary folder: every module then has one dotted name, storydiffusion.<package>.<module>.
Settings: [tool.mypy] in pyproject.toml. Exit status: mypy's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MYPY = [sys.executable, "-m", "mypy"]  # installed by scripts/setup_env.sh (requirements-dev*.txt)
PACKAGES = ("attention", "families", "motion", "story")


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory(prefix="story-mypy-") as tmp:
        (Path(tmp) / "storydiffusion").symlink_to(ROOT, target_is_directory=True)
        packages = [arg for pkg in argv or PACKAGES for arg in ("-p", f"storydiffusion.{pkg}")]
        mypy = os.environ.get("STORY_MYPY")  # another mypy (its --python-executable: this one)
        head = [mypy, "--python-executable", sys.executable] if mypy else MYPY
        cmd = [*head, "--config-file", str(ROOT / "pyproject.toml"), *packages]
        return subprocess.run(cmd, cwd=tmp).returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
