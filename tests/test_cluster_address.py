"""Which Ray cluster `idd run` joins: --address, then ray.address, then RAY_ADDRESS (ray job submit)."""

from instructdiffusion_data.config import RayConfig
from instructdiffusion_data.runner import cluster_address


def test_address_precedence(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert cluster_address(RayConfig()) is None  # embedded Ray
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")  # what `ray job submit` gives its entrypoint
    assert cluster_address(RayConfig()) == "10.0.0.5:6379"
    assert cluster_address(RayConfig(address="auto")) == "auto"
    assert cluster_address(RayConfig(address="auto"), "ray://head:10001") == "ray://head:10001"
    monkeypatch.setenv("RAY_ADDRESS", "")
    assert cluster_address(RayConfig()) is None
