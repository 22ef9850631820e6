import os
import sys
import warnings

import pytest

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _torch_grad_mode_restored(request):
    """Grad mode is per-thread state that outlives a test: one that leaves it off would make every later
    in-process training test fail far from the cause. Restore it and name the test in a warning."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None and not torch.is_grad_enabled():
        torch.set_grad_enabled(True)
        warnings.warn(f"{request.node.nodeid} left torch grad mode off (restored)")


@pytest.fixture(scope="session")
def ray_local():
    """One embedded Ray for the whole session (2 CPUs, small object store, no dashboard)."""
    import ray

    if not ray.is_initialized():
        # address="local": always a new embedded instance, never a cluster some other test started
        ray.init(address="local", num_cpus=2, object_store_memory=400 * 1024**2, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    yield ray


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    """The COCO-family demo datasets (12 scenes), generated once per test session."""
    from instructdiffusion_data.demo import generate_all

    root = tmp_path_factory.mktemp("demo")
    generate_all(root, n=12, seed=3, only=["coco"])
    return root
