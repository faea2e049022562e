"""Test harness: offline, CPU, W&B disabled, no network.

The environment variables must be set before open_clip / huggingface_hub / wandb are imported,
because they read them at import time (see ../shared/specs/ecosystem.md).
"""
import json
import os
import socket
from pathlib import Path

os.environ["WANDB_MODE"] = "disabled"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# Under pytest-xdist (the default: see addopts in pyproject.toml) the workers share the cores:
# each worker, and every subprocess it starts, gets its share of intra-op threads, set before
# torch is imported. Oversubscribed threads on two cores made the tiny models' steps slower.
_XDIST_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _XDIST_WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // _XDIST_WORKERS)))

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
SHARED_ASSETS = REPO_ROOT.parent / "shared" / "assets"
# Tests read the published data files from the shared copy, never from the network.
if SHARED_ASSETS.is_dir():
    os.environ.setdefault("CLIPCORE_ASSETS_DIR", str(SHARED_ASSETS))

import pytest  # noqa: E402

from clipdistill.app import register_config_sections  # noqa: E402

# Every method family's config schema, as the entry points register it (light: no torch).
register_config_sections()

# The prompt-learner test modules' shared fixtures (`tiny`, `images`); a module that defines its
# own fixture of the same name uses its own.
pytest_plugins = ["prompt_learners"]


def _refuse_network(*args, **kwargs):
    raise OSError("network access is disabled in tests")


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """Any attempt to open an internet connection fails immediately.

    Unix sockets and loopback stay allowed: DDP on CPU (gloo) rendezvouses on 127.0.0.1.
    """
    real_connect = socket.socket.connect

    def guarded_connect(self, address):
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        host = address[0] if isinstance(address, tuple) else str(address)
        if host in ("127.0.0.1", "localhost", "::1", "0.0.0.0"):
            return real_connect(self, address)
        return _refuse_network()

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    yield


@pytest.fixture(scope="session")
def tiny_clip_config() -> dict:
    """A 1.7M-parameter CLIP architecture (random weights, real tokenizer vocabulary)."""
    return json.loads((TESTS_DIR / "assets" / "tiny-clip.json").read_text())


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    if not SHARED_ASSETS.is_dir():
        pytest.skip(f"shared assets not found at {SHARED_ASSETS}")
    return SHARED_ASSETS


@pytest.fixture(scope="session", autouse=True)
def synthetic_cache(tmp_path_factory, request):
    """One clipcore cache ($CLIPCORE_CACHE_DIR) for the whole session: the test-profile synthetic
    CLIPs are pretrained at most once, and no test reads or writes the user's ~/.cache.

    The xdist workers share it (the folder above each worker's base temp): the synthetic bundles
    are built under a file lock and every cache file is written by atomic rename."""
    base = tmp_path_factory.getbasetemp()
    # (workerinput exists on xdist's workers only; a pytest that a test starts inherits their
    # environment but is not one of them.)
    root = (base.parent if hasattr(request.config, "workerinput") else base) / "clipcore-cache"
    root.mkdir(exist_ok=True)
    mp = pytest.MonkeyPatch()
    mp.setenv("CLIPCORE_CACHE_DIR", str(root))
    yield root
    mp.undo()
