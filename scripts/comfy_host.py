"""Locate the ComfyUI host and run it headless with the pack installed.

Used by the README's commands (scripts/run_story.py, `make serve`) and by the live-server
tests. The host is $COMFYUI_PATH when set, else the host scripts/setup_env.sh recorded in the
running virtual environment (each host has its own), else the embedded ComfyUI 0.3.75 in
.host/ComfyUI. Standard library only.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import types
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACK_FOLDER = "comfyui-storydiffusion"  # the folder name the pack gets under custom_nodes/
TINY_PACK_DIR = ROOT / "tests" / "tiny_models"
TINY_PACK_FOLDER = "storydiffusion-tiny-models"


def pack_module(dotted: str, package: str = "storydiffusion_script"):
    """A module of the pack (e.g. "world_model.build") imported as a package, the way ComfyUI loads the
    pack, never with the pack's root on sys.path (ComfyUI has a top-level nodes.py; the pack, nodes/)."""
    if package not in sys.modules:
        parent = types.ModuleType(package)
        parent.__path__ = [str(ROOT)]
        sys.modules[package] = parent
    return importlib.import_module(f"{package}.{dotted}")


def host_root() -> Path:
    env = os.environ.get("COMFYUI_PATH")
    if env:
        return Path(env).resolve()
    recorded = Path(sys.prefix) / "comfyui-host-path"
    if recorded.is_file():
        path = Path(recorded.read_text().strip())
        if (path / "main.py").is_file():
            return path
    return ROOT / ".host" / "ComfyUI"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_base_directory(base: Path, with_tiny_models: bool, checkpoints: list[Path] = ()) -> Path:
    """A ComfyUI --base-directory holding only this pack (and optionally the tiny-model test pack)."""
    custom = base / "custom_nodes"
    custom.mkdir(parents=True, exist_ok=True)
    links = {PACK_FOLDER: ROOT}
    if with_tiny_models:
        links[TINY_PACK_FOLDER] = TINY_PACK_DIR
    for name, target in links.items():
        link = custom / name
        if not link.exists():
            link.symlink_to(target, target_is_directory=True)
    ckpt_dir = base / "models" / "checkpoints"
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    for ckpt in checkpoints:
        link = ckpt_dir / ckpt.name
        if not link.exists():
            link.symlink_to(ckpt.resolve())
    return base


class HttpClient:
    """JSON over HTTP to a ComfyUI server at `self.url` (standard library only)."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def get(self, path: str, timeout: float = 30) -> object:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())

    def get_bytes(self, path: str, timeout: float = 60) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return r.read()

    def post(self, path: str, payload: dict, timeout: float = 30) -> tuple[int, dict]:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, json.loads(r.read() or b"{}")
        except urllib.error.HTTPError as e:
            body = e.read()
            try:
                return e.code, json.loads(body)
            except ValueError:
                return e.code, {"error": {"message": body.decode(errors="replace")}}


class Terminated(SystemExit):
    """SIGTERM (docker stop, systemd, kill) turned into an exception, so `with`/`finally` blocks
    stop the ComfyUI child before the launcher exits."""


def _raise_terminated(signum, frame):
    raise Terminated(128 + signum)


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends SIGTERM when the launcher dies, even by SIGKILL
    (Linux only; elsewhere nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a launcher started in the background ignores SIGINT


class ComfyServer(HttpClient):
    """A headless ComfyUI child process on a free loopback port; always stopped on exit.

    While it runs, SIGTERM in the launcher raises `Terminated` and SIGINT raises
    KeyboardInterrupt even when the launcher was started in the background (where SIGINT is
    ignored), so the launcher stops and reaps the child (in the main thread; restored on stop).
    """

    def __init__(
        self,
        base: Path,
        port: int | None = None,
        with_tiny_models: bool = True,
        checkpoints: list[Path] = (),
        log_path: Path | None = None,
        extra_args: list[str] = (),
    ):
        self.base = make_base_directory(Path(base), with_tiny_models, list(checkpoints))
        self.port = port or free_port()
        super().__init__(f"http://127.0.0.1:{self.port}")
        self.log_path = Path(log_path) if log_path else self.base / "comfyui.log"
        whitelist = [PACK_FOLDER] + ([TINY_PACK_FOLDER] if with_tiny_models else [])
        self.cmd = [
            sys.executable,
            str(host_root() / "main.py"),
            "--cpu",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--base-directory",
            str(self.base),
            "--disable-all-custom-nodes",
            "--whitelist-custom-nodes",
            *whitelist,
            "--disable-auto-launch",
            "--database-url",
            "sqlite:///:memory:",
            "--disable-api-nodes",
            *extra_args,
        ]
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 180.0) -> ComfyServer:
        self._log = open(self.log_path, "w")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self._install_signal_handlers()
        self.proc = subprocess.Popen(
            self.cmd,
            cwd=str(host_root()),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            preexec_fn=_die_with_parent if os.name == "posix" else None,
        )
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"ComfyUI exited with code {self.proc.returncode} during start-up:\n{self.log_tail()}"
                )
            try:
                self.get("/system_stats", timeout=2)
                return self
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f}s:\n{self.log_tail()}")

    def _install_signal_handlers(self) -> None:
        self._previous_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous_handlers[signal.SIGTERM] = signal.signal(signal.SIGTERM, _raise_terminated)
        if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
            self._previous_handlers[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)

    def _restore_signal_handlers(self) -> None:
        for signum, handler in getattr(self, "_previous_handlers", {}).items():
            signal.signal(signum, handler)
        self._previous_handlers = {}

    def stop(self) -> None:
        """Terminate the child (kill it after 20 s) and reap it; a second signal while stopping
        does not leave it running."""
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        except BaseException:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            raise
        finally:
            self._restore_signal_handlers()
            if getattr(self, "_log", None):
                self._log.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


@contextlib.contextmanager
def temporary_server(**kwargs):
    base = Path(tempfile.mkdtemp(prefix="story-comfy-"))
    try:
        with ComfyServer(base, **kwargs) as server:
            yield server
    finally:
        shutil.rmtree(base, ignore_errors=True)
