"""The container files without a Docker engine: everything the Dockerfiles copy or install exists, the
Makefile targets they run exist, and the KubeRay RayJob parses and runs an existing pipeline config."""

import re
import shlex
from pathlib import Path

import pytest
import yaml

from instructdiffusion_data.config import load_pipeline_config

REPO = Path(__file__).resolve().parent.parent
DOCKERFILES = sorted((REPO / "docker").glob("Dockerfile.*[!e]"))  # not the *.dockerignore files


def instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            op, _, rest = line.partition(" ")
            out.append((op.upper(), rest.strip()))
    return out


def make_targets() -> set[str]:
    return {m.group(1) for m in re.finditer(r"^([A-Za-z][\w.-]*)\s*:", (REPO / "Makefile").read_text(), re.M)}


def test_there_are_cpu_and_gpu_images():
    assert {p.name for p in DOCKERFILES} == {"Dockerfile.cpu", "Dockerfile.gpu"}
    assert "cuda" in dict(instructions(REPO / "docker" / "Dockerfile.gpu"))["FROM"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_every_copied_or_installed_file_exists(dockerfile):
    ins = instructions(dockerfile)
    copied: set[str] = set()
    for op, args in ins:
        if op in ("COPY", "ADD"):
            parts = [a for a in shlex.split(args) if not a.startswith("--")]
            assert len(parts) >= 2, args
            for src in parts[:-1]:
                assert (REPO / src).exists(), f"{dockerfile.name}: COPY {src}: not in the repository"
                copied.add(src.rstrip("/"))
    runs = " && ".join(args for op, args in ins if op == "RUN")
    # every requirement file pip installs was copied in and exists
    for req in re.findall(r"-r\s+(\S+)", runs):
        assert (REPO / req).is_file(), f"{dockerfile.name}: pip -r {req}: missing"
        assert req in copied or str(Path(req).parent) in copied or Path(req).name in copied, req
    # the environment comes from the Makefile (one source of truth), through targets that exist
    args = dict(a.split("=", 1) for op, a in ins if op == "ARG" and "=" in a)
    targets = [args.get(t.lstrip("$").strip("{}"), t) if t.startswith("$") else t
               for t in re.findall(r"(?:^|&&|;)\s*make\s+(\$?\{?\w[\w-]*\}?)", runs)]
    assert targets, f"{dockerfile.name}: installs without the Makefile"
    for t in targets:
        assert t in make_targets(), f"{dockerfile.name}: make {t}: no such Makefile target"
    # what the Makefile target reads is in the image
    makefile = (REPO / "Makefile").read_text()
    for need in re.findall(r"-r (requirements[\w-]*\.txt)", makefile):
        assert need in copied, f"{dockerfile.name}: the Makefile installs {need}, which is not copied"
    assert {"Makefile", "pyproject.toml", "README.md", "instructdiffusion_data", "configs"} <= copied


def test_gpu_image_swaps_faiss_for_the_gpu_build():
    runs = " ".join(a for op, a in instructions(REPO / "docker" / "Dockerfile.gpu") if op == "RUN")
    assert "make venv-gpu" in runs
    target = re.search(r"^venv-gpu:.*?(?=^\S|\Z)", (REPO / "Makefile").read_text(), re.M | re.S).group(0)
    assert "uninstall -y -q faiss-cpu" in target and "docker/requirements-gpu.txt" in target
    gpu_reqs = (REPO / "docker" / "requirements-gpu.txt").read_text()
    assert re.search(r"^faiss-gpu==\d", gpu_reqs, re.M)
    core = (REPO / "requirements.txt").read_text()
    pin = re.search(r"^faiss-cpu==(\S+)", core, re.M).group(1)
    assert f"faiss-gpu=={pin}" in gpu_reqs, "faiss-gpu and faiss-cpu pins must match"


def test_rayjob_manifest_runs_an_existing_config():
    doc = yaml.safe_load((REPO / "docker" / "rayjob.yaml").read_text())
    assert doc["apiVersion"] == "ray.io/v1" and doc["kind"] == "RayJob"
    spec = doc["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["idd", "run"]
    configs = [a for a in argv[2:] if a.endswith(".yaml")]
    assert configs and all((REPO / c).is_file() for c in configs)
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    for c in configs:
        cfg = load_pipeline_config(REPO / c, sets)  # the overrides apply to real keys of the config
        assert cfg.stages
    ray_version = spec["rayClusterSpec"]["rayVersion"]
    reqs = (REPO / "requirements.txt").read_text()
    assert f"=={ray_version}" in reqs.split("ray[data]")[1].splitlines()[0]
    groups = [spec["rayClusterSpec"]["headGroupSpec"], *spec["rayClusterSpec"]["workerGroupSpecs"]]
    images = {c["image"] for g in groups for c in g["template"]["spec"]["containers"]}
    assert {i.rsplit(":", 1)[1] for i in images} <= {"cpu", "gpu", "cpu-ml"}
    gpu = [g for g in spec["rayClusterSpec"]["workerGroupSpecs"]
           if any("nvidia.com/gpu" in c["resources"]["limits"] for c in g["template"]["spec"]["containers"])]
    assert gpu and all(c["image"].endswith(":gpu") for g in gpu for c in g["template"]["spec"]["containers"])
