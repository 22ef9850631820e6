"""Issue 14 item 11: every script a make target runs imports only what requirements.txt installs.

``make bench`` runs after ``make demo`` (core requirements only), so a bench script that imports a package
only ``requirements-ml.txt`` installs (psutil, via the model set) fails from a fresh clone.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCAL = {"instructdiffusion_data", "trainer", "bench", "tests"}


def requirement_names(path: Path) -> set[str]:
    names = set()
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line and not line.startswith("-"):
            names.add(re.split(r"[\[=<>~!; ]", line, maxsplit=1)[0].lower().replace("_", "-"))
    return names


def core_targets_scripts() -> list[Path]:
    """The bench scripts the project's python runs in make targets that only need ``venv`` (the core
    requirements)."""
    text = (ROOT / "Makefile").read_text()
    scripts = []
    for block in re.split(r"\n(?=\S)", text):
        head = block.split("\n", 1)[0]
        m = re.match(r"^([\w.-]+)\s*:(.*)$", head)
        if not m or ".ml" in m.group(2) or "venv-ml" in m.group(2):
            continue
        # scripts the project's venv runs (bench-gpu runs the GPU host's own python, with torch preinstalled
        # and the wheels of `make gpu-wheels`: not a core target)
        for line in block.splitlines():
            if "$(BIN)/python" in line:
                scripts += [ROOT / s for s in re.findall(r"(bench/[\w./-]+\.py)", line)]
    return scripts


def third_party_imports(path: Path, seen: set[Path] | None = None) -> set[str]:
    """Top-level imports of a script and of the sibling bench modules it imports (bench_cluster -> bench_tasks)."""
    seen = seen if seen is not None else set()
    if path in seen:
        return set()
    seen.add(path)
    mods = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            mods |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            mods.add(node.module.split(".")[0])
    out = set()
    for m in mods:
        sibling = path.parent / f"{m}.py"
        if sibling.is_file():
            out |= third_party_imports(sibling, seen)
        elif m not in sys.stdlib_module_names and m not in LOCAL:
            out.add(m)
    return out


def test_make_bench_scripts_import_only_core_requirements():
    scripts = core_targets_scripts()
    assert ROOT / "bench" / "bench_tasks.py" in scripts  # make bench
    req = requirement_names(ROOT / "requirements.txt")
    dists = md.packages_distributions()
    missing = {}
    for script in scripts + [ROOT / "bench" / "bench_cluster.py"]:  # bench_cluster reuses bench_tasks
        for mod in sorted(third_party_imports(script)):
            names = {d.lower().replace("_", "-") for d in dists.get(mod, [mod])}
            if not names & req:
                missing.setdefault(script.name, []).append(mod)
    assert not missing, f"imports not installed by requirements.txt: {missing}"


def test_psutil_pin_is_the_installed_version():
    pins = dict(re.findall(r"^(psutil)==([\w.]+)", (ROOT / "requirements.txt").read_text(), re.M))
    assert pins.get("psutil") == md.version("psutil")
