"""Test harness: a real ComfyUI host in-process, the pack loaded the way ComfyUI loads it,
tiny random-weight models, and a live headless server for API tests.

Never puts the pack root on sys.path (ComfyUI's top-level `nodes.py` vs our `nodes/`):
the host root and this tests/ folder are the only additions.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SCRIPTS = ROOT / "scripts"


def _host_root() -> Path:
    """The ComfyUI host the tests run in (scripts/comfy_host.py decides), imported lazily."""
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    from comfy_host import host_root

    return host_root()


HOST = _host_root()
for p in (str(TESTS), str(HOST)):
    if p not in sys.path:
        sys.path.insert(0, p)


def pytest_configure(config):
    config.addinivalue_line("markers", "live: starts a real headless ComfyUI server")
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    # ComfyUI on the CPU, before comfy.model_management is imported anywhere. Nothing of the host is
    # imported here otherwise: the pure-package tests (attention/, families/, motion/, story/) run
    # without one.
    try:
        from comfy.cli_args import args as comfy_args
    except ImportError:
        return
    comfy_args.cpu = True


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    """pytest imports the pack root's __init__.py as a package of the tests (it is one); that import
    loads nodes/ and so ComfyUI. The pack is loaded the way ComfyUI loads it (pack_loader.py) by the
    tests that need it, and pure-package tests need no host: the root package's setup is skipped."""
    for node in item.listchain():
        if isinstance(node, pytest.Package) and node.path == ROOT:
            node.setup = lambda: None


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tiny models run as fast on one thread, and far faster when other jobs share the two cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- the pack, loaded by ComfyUI's own loader -------------------------------------
@pytest.fixture(scope="session")
def pack():
    """The pack module, imported through nodes.load_custom_node exactly as ComfyUI does."""
    from pack_loader import load_pack

    return load_pack()


@pytest.fixture(scope="session")
def node_classes(pack):
    return pack.NODE_CLASS_MAPPINGS


# ---- tiny models --------------------------------------------------------------------
_TINY_CACHE: dict = {}


def _tiny(family: str):
    if family not in _TINY_CACHE:
        from tiny_models import factory

        if family == "svd":
            _TINY_CACHE[family] = (factory.tiny_unet("svd"), None, factory.tiny_vae())
        else:
            _TINY_CACHE[family] = factory.tiny_checkpoint(family)
    return _TINY_CACHE[family]


@pytest.fixture(scope="session")
def tiny():
    """tiny(family) -> (MODEL, CLIP, VAE), built once per session; never mutate them, clone()."""
    return _tiny


# ---- a live server -------------------------------------------------------------------
@pytest.fixture(scope="session")
def live_server():
    """ComfyUI main.py --cpu on a free loopback port, with this pack and the tiny-model test pack."""
    from comfy_host import ComfyServer

    base = Path(tempfile.mkdtemp(prefix="story-test-comfy-"))
    server = ComfyServer(base, with_tiny_models=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)


def pytest_sessionfinish(session, exitstatus):
    """Free the tiny models while ComfyUI's modules still exist (ModelPatcher.__del__ needs them)."""
    import gc

    _TINY_CACHE.clear()
    import dit_helpers

    dit_helpers.clear()
    gc.collect()
