"""Suite-wide test settings: torch runs on one CPU thread, here and in the commands tests start.

The suite runs on two CPU cores shared with other jobs. With torch's default of one OpenMP
thread per core, every small tensor operation ends in a thread barrier, and the threads spin there
while the other core is busy. Measured on the 2-core machine while other jobs ran: the BA gradient
check took 14.8 CPU seconds on two threads and 1.3 on one, and the EuRoC run of the runner
test 18.1 against 3.1. ``OMP_NUM_THREADS`` is set before torch is imported, so the subprocesses
that tests start (the runner, the trainer, the ROS 2 node) inherit it. A value already in the
environment is kept, so ``OMP_NUM_THREADS=2 pytest ...`` still runs on two threads.
"""

from __future__ import annotations

import os

TEST_THREADS = "1"
"""Torch's CPU thread count in the tests unless ``OMP_NUM_THREADS`` is already set."""

os.environ.setdefault("OMP_NUM_THREADS", TEST_THREADS)

import torch  # noqa: E402  (imported after OMP_NUM_THREADS is set, so OpenMP reads it)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


import importlib.util  # noqa: E402
from pathlib import Path  # noqa: E402
from types import ModuleType  # noqa: E402

import pytest  # noqa: E402

RANDOM_MODEL_SEED = 0
SCRIPTS_DIR = Path(__file__).resolve().parents[1] / "scripts"


def load_module_from_file(path: Path, name: str) -> ModuleType:
    """Import the Python file ``path`` (a script or launch file outside any package) as ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _save_random_model(folder, name: str, network=None):
    """Save a randomly initialised ``small`` preset network (seed 0) as ``folder / name``.

    ``network`` (a NetworkConfig) replaces the preset's network sizes.
    """
    import dataclasses

    from vo_node.config import load_engine_config
    from vo_node.model.network import VONetwork, save_model

    config = load_engine_config("small")
    if network is not None:
        config = dataclasses.replace(config, network=network)
    torch.manual_seed(RANDOM_MODEL_SEED)
    path = folder / name
    save_model(path, VONetwork(config.network), config, {"note": "random weights for tests"})
    return path


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory):
    """A random network of tiny sizes in a model file, for tests of plumbing, not accuracy."""
    from vo_node.config import NetworkConfig

    network = NetworkConfig(matching_dim=16, context_dim=32, encoder_dim=8)
    return _save_random_model(tmp_path_factory.mktemp("model"), "random_tiny.pt", network)


@pytest.fixture(scope="session")
def small_model(tmp_path_factory: pytest.TempPathFactory):
    """A random network of the ``small`` preset's sizes in a model file."""
    return _save_random_model(tmp_path_factory.mktemp("model"), "random_small.pt")
