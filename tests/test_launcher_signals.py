"""The launchers (`make serve` = scripts/serve.py, `make demo` = scripts/run_story.py, and the
test fixtures' ComfyServer) stop ComfyUI when they are stopped: SIGTERM (docker stop, systemd)
and SIGINT, also when started in the background (where the shell makes SIGINT ignored). The
port closes and no ComfyUI process is left, re-parented and serving."""

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from comfy_host import free_port

pytestmark = [pytest.mark.live, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _ignore_sigint():  # what `cmd &` in a non-interactive shell does to the background job
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _start(cmd, tmp_path, background: bool):
    log = open(tmp_path / "launcher.log", "w+")
    proc = subprocess.Popen(
        cmd,
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        text=True,
        env=dict(os.environ, PYTHONUNBUFFERED="1"),
        preexec_fn=_ignore_sigint if background else None,
    )
    return proc, log


def _wait_for(pattern: str, log, proc, timeout: float = 240) -> re.Match:
    deadline = time.time() + timeout
    while time.time() < deadline:
        log.seek(0)
        found = re.search(pattern, log.read())
        if found:
            return found
        if proc.poll() is not None:
            log.seek(0)
            pytest.fail(f"the launcher exited with {proc.returncode} before it was up:\n{log.read()[-3000:]}")
        time.sleep(0.5)
    proc.kill()
    log.seek(0)
    pytest.fail(f"the launcher did not come up:\n{log.read()[-3000:]}")


def _stop_and_check(proc, port: int, signum: int, log) -> None:
    comfy = _children(proc.pid)
    assert comfy and _port_open(port), "ComfyUI should be up before the signal"
    proc.send_signal(signum)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        for pid in comfy:
            os.kill(pid, signal.SIGKILL)
        log.seek(0)
        pytest.fail(f"the launcher ignored {signal.Signals(signum).name}:\n{log.read()[-2000:]}")
    deadline = time.time() + 10
    while time.time() < deadline and (_port_open(port) or any(_alive(p) for p in comfy)):
        time.sleep(0.2)
    left = [p for p in comfy if _alive(p)]
    for pid in left:  # never leave one behind, even when the test fails
        os.kill(pid, signal.SIGKILL)
    assert not left, (
        f"ComfyUI (pid {left}) is still running after the launcher got {signal.Signals(signum).name}"
    )
    assert not _port_open(port), f"port {port} still open"


@pytest.mark.parametrize(
    "signum, background",
    [(signal.SIGTERM, False), (signal.SIGINT, True)],
    ids=["sigterm", "sigint-in-background"],
)
def test_make_serve_launcher_stops_comfyui_on_a_signal(tmp_path, signum, background):
    port = free_port()
    proc, log = _start(
        [sys.executable, "scripts/serve.py", "--port", str(port), "--base", str(tmp_path / "base")],
        tmp_path,
        background,
    )
    _wait_for(r"storydiffusion pack: http://127\.0\.0\.1:\d+", log, proc)
    _stop_and_check(proc, port, signum, log)


def test_make_serve_loads_the_tiny_test_nodes_only_when_asked(tmp_path):
    from comfy_host import HttpClient

    for flag, expected in (([], False), (["--tiny-models"], True)):
        port = free_port()
        proc, log = _start(
            [
                sys.executable,
                "scripts/serve.py",
                "--port",
                str(port),
                "--base",
                str(tmp_path / "base"),
                *flag,
            ],
            tmp_path,
            False,
        )
        try:
            _wait_for(r"storydiffusion pack: http://", log, proc)
            info = HttpClient(f"http://127.0.0.1:{port}").get("/object_info")
            assert "StoryDiffPrompt" in info
            assert any(k.startswith("StoryTestTiny") for k in info) == expected, flag
        finally:
            _stop_and_check(proc, port, signal.SIGTERM, log)


def test_make_demo_launcher_stops_comfyui_on_sigterm(tmp_path):
    proc, log = _start(
        [sys.executable, "scripts/run_story.py", "--output", str(tmp_path / "out"), "--steps", "200"],
        tmp_path,
        False,
    )
    port = int(_wait_for(r"ComfyUI is up at http://127\.0\.0\.1:(\d+)", log, proc).group(1))
    _stop_and_check(proc, port, signal.SIGTERM, log)
    assert proc.returncode == 128 + signal.SIGTERM
