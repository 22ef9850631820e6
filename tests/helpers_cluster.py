"""A real two-node Ray cluster on this machine for the cluster tests, and a stage that reports where it runs.

Both nodes are ``ray start --block`` processes, each in its own session (``setsid``) with a private
``--temp-dir``, 1 CPU and a 200 MB object store. Every process of a node (raylet, GCS, agents,
workers, actors) belongs to that session, so teardown signals exactly those processes, by pid, and
nothing else on the machine (``ray stop`` would kill every Ray on the host). The address file
``ray_current_cluster`` is written under the private temp dir, never ``/tmp/ray``, so a later plain
``ray.init()`` cannot find this cluster; :meth:`LocalCluster.stop` removes the temp dir and checks it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.helpers_core import PaintConfig, PaintStage

REPO = Path(__file__).resolve().parent.parent
RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE = 200 * 1000 * 1000


def free_ports(n: int) -> list[int]:
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


# The cluster's own auth token (NOTES: a second node needs RAY_AUTH_MODE=token). Given by env to both
# nodes, every driver and the `ray job` CLI, so nothing depends on (or writes) ~/.ray/auth_token.
AUTH_TOKEN = secrets.token_hex(32)


def cluster_env(**extra: str) -> dict:
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=AUTH_TOKEN, RAY_USAGE_STATS_ENABLED="0",
               PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **extra)
    env.pop("RAY_ADDRESS", None)
    env.pop("RAY_AUTH_TOKEN_PATH", None)
    return env


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is ``sid`` (everything a ``setsid ray start`` node spawned)."""
    out = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[3]) == sid and fields[0] != "Z":
            out.append(int(d.name))
    return out


class LocalCluster:
    def __init__(self) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="idd-ray-", dir="/tmp"))  # short: unix socket paths
        self.nodes: list[subprocess.Popen] = []
        self.address = ""
        self.dashboard = ""
        self.client = ""

    def _start(self, args: list[str], log: str) -> subprocess.Popen:
        fh = open(self.tmp / log, "wb")
        proc = subprocess.Popen([RAY, "start", "--block", "--disable-usage-stats", *args], cwd=REPO,
                                env=cluster_env(), stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
        self.nodes.append(proc)
        return proc

    def start(self, timeout: float = 90) -> "LocalCluster":
        gcs, dash, *p = free_ports(11)
        common = ["--num-cpus=1", f"--object-store-memory={OBJECT_STORE}"]
        self._start(["--head", f"--port={gcs}", f"--temp-dir={self.tmp}/head", f"--dashboard-port={dash}",
                     "--include-dashboard=true", "--dashboard-host=127.0.0.1",
                     f"--dashboard-agent-listen-port={p[0]}", f"--dashboard-agent-grpc-port={p[1]}",
                     f"--metrics-export-port={p[2]}", f"--runtime-env-agent-port={p[3]}",
                     f"--ray-client-server-port={p[4]}", *common], "head.log")
        from ray._private.services import get_node_ip_address

        # the second node starts at once and waits for the head's GCS (saves a head start-up time)
        self.address = f"{get_node_ip_address()}:{gcs}"
        self.dashboard = f"http://127.0.0.1:{dash}"
        self.client = f"ray://127.0.0.1:{p[4]}"
        self._start([f"--address={self.address}", f"--temp-dir={self.tmp}/worker",
                     f"--dashboard-agent-listen-port={p[5]}", f"--dashboard-agent-grpc-port={p[6]}",
                     f"--metrics-export-port={p[7]}", f"--runtime-env-agent-port={p[8]}", *common], "worker.log")
        started = "Ray runtime started"
        self._wait(lambda: all(started in (self.tmp / f).read_text(errors="replace") for f in ("head.log", "worker.log")),
                   timeout, "both nodes")
        addr_file = self.tmp / "head" / "ray_current_cluster"
        assert addr_file.read_text().strip() == self.address, addr_file.read_text()
        self._wait(lambda: self.alive_nodes() == 2, timeout, "second node")
        return self

    def alive_nodes(self) -> int:
        res = subprocess.run([RAY, "list", "nodes", "--address", self.dashboard, "--filter", "state=ALIVE",
                              "--format", "json"], env=cluster_env(), capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            return 0
        import json

        try:
            return len(json.loads(res.stdout))
        except ValueError:
            return 0

    def _wait(self, cond, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if any(p.poll() is not None for p in self.nodes):
                raise RuntimeError(f"{what}: ray start exited\n{self.logs()}")
            if cond():
                return
            time.sleep(0.5)
        raise TimeoutError(f"{what} not up after {timeout}s\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join((p.read_text(errors="replace")[-2000:]) for p in sorted(self.tmp.glob("*.log")))

    def worker_pids(self) -> list[int]:
        return [pid for n in self.nodes for pid in session_pids(n.pid)]

    def stop(self) -> None:
        """Kill every process of both nodes (by pid, SIGKILL: no 30 s drain), reap, remove the temp dir."""
        for _ in range(3):
            pids = self.worker_pids()
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            for n in self.nodes:
                try:
                    n.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if not self.worker_pids():
                break
            time.sleep(0.5)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> "LocalCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


@dataclass
class WhereConfig(PaintConfig):
    where_dir: str = ""  # each batch leaves a file "<node id>.<pid>" here


class WherePaint(PaintStage):
    """PaintStage that records the node and process each batch runs in (the rows are unchanged)."""

    name = "paint"
    Config = WhereConfig

    def process(self, rows):
        if self.config.where_dir:
            try:
                import ray

                node = ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"
            except Exception:  # noqa: BLE001 - no Ray in this process
                node = "local"
            Path(self.config.where_dir, f"{node}.{os.getpid()}").touch()
        return super().process(rows)
