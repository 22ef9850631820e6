"""Issue 14 item 10: a full disk, a read-only or missing output folder print one line, not a traceback.

(The runner reports a failure inside one shard's write itself, per shard; the errors injected here are
those that reach the command: the output folder, the manifest.)

``idd`` turns an OS error a user can act on (ENOSPC, EDQUOT, EROFS, EACCES, EPERM, and ENOENT/ENOTDIR on
an output path), also one wrapped by another exception (``raise ... from``, Ray's ``RayTaskError.cause``),
into ``idd CMD: error: WHAT writing PATH: WHAT TO DO`` on stderr with exit code 2. Other exceptions keep
their traceback.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from instructdiffusion_data.cli import main

REPO = Path(__file__).resolve().parent.parent

CONFIG = """\
name: t
source: {type: "tests.helpers_core:CountSource", n: 5}
stages:
  - {type: "tests.helpers_core:PaintStage", variants: 1, batch_size: 4}
writer: {records_per_shard: 10}
"""


@pytest.fixture
def cfg(tmp_path) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(CONFIG)
    return p


def is_progress(line: str) -> bool:  # tqdm's bars also go to stderr
    return "%|" in line or "shard/s]" in line


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and not is_progress(ln)]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def _really_read_only(path: Path) -> bool:
    try:
        (path / ".probe").write_text("x")
    except OSError:
        return True
    (path / ".probe").unlink()
    return False


def _deny_writes_under(monkeypatch, folder: Path, code: int = errno.EACCES) -> None:
    """What a read-only folder does, for a root user (chmod does not stop root): every way the engine
    creates files or folders (pyarrow's local file system, os, open) fails under ``folder``."""
    folder = str(folder.absolute())

    def refuse(path, what="Cannot create directory"):
        p = os.fspath(path)
        if str(p).startswith(folder):
            raise OSError(code, f"{what} '{p}'. Detail: [errno {code}] {os.strerror(code)}")

    class ReadOnlyFS(pafs.LocalFileSystem):
        def create_dir(self, path, *, recursive=True):
            refuse(path)
            return super().create_dir(path, recursive=recursive)

        def open_output_stream(self, path, *a, **k):
            refuse(path, "Failed to open local file")
            return super().open_output_stream(path, *a, **k)

        def move(self, src, dest):
            refuse(dest, "Failed to rename")
            return super().move(src, dest)

    real_mkdir, real_open, real_os_open = os.mkdir, open, os.open

    def mkdir(path, *a, **k):
        if os.fspath(path).startswith(folder):
            raise PermissionError(code, os.strerror(code), os.fspath(path))
        return real_mkdir(path, *a, **k)

    def os_open(path, flags, *a, **k):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and os.fspath(path).startswith(folder):
            raise PermissionError(code, os.strerror(code), os.fspath(path))
        return real_os_open(path, flags, *a, **k)

    def builtin_open(path, mode="r", *a, **k):
        if isinstance(path, (str, os.PathLike)) and any(c in mode for c in "wax+") \
                and os.fspath(path).startswith(folder):
            raise PermissionError(code, os.strerror(code), os.fspath(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(pafs, "LocalFileSystem", ReadOnlyFS)
    monkeypatch.setattr(os, "mkdir", mkdir)
    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr("builtins.open", builtin_open)


def test_read_only_output_folder_is_one_line(tmp_path, cfg, capsys, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        if not _really_read_only(ro):  # running as root: simulate what the kernel would answer
            _deny_writes_under(monkeypatch, ro)
        rc = main(["run", str(cfg), "--out", str(ro), "--no-ray"])
    finally:
        ro.chmod(0o755)
    line = one_error_line(capsys)
    assert rc == 2
    assert line.startswith("idd run: error: permission denied on ") and str(ro) in line
    assert "choose another --out" in line


def test_a_file_where_the_output_folder_should_be_is_one_line(tmp_path, cfg, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    rc = main(["run", str(cfg), "--out", str(blocker / "out"), "--no-ray"])
    line = one_error_line(capsys)
    assert rc == 2 and line.startswith("idd run: error: not a directory writing ") and str(blocker) in line


def test_full_disk_is_one_line_naming_the_path(tmp_path, cfg, capsys, monkeypatch):
    from instructdiffusion_data import writer

    target = tmp_path / "out" / "t" / "v1" / "manifest.json.tmp"

    def full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(target))

    monkeypatch.setattr(writer.ShardWriter, "write_manifest", full)
    rc = main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-ray"])
    line = one_error_line(capsys)
    assert rc == 2
    assert line == (f"idd run: error: no space left on device writing {target}: free space or choose another --out")


def test_full_disk_without_a_file_name_names_the_output(tmp_path, cfg, capsys, monkeypatch):
    from instructdiffusion_data import writer

    def full(self, *a, **k):  # what file.write() raises: no file name
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer.ShardWriter, "write_manifest", full)
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-ray"]) == 2
    line = one_error_line(capsys)
    assert line.startswith("idd run: error: no space left on device writing under ") and str(tmp_path / "out") in line


@pytest.mark.parametrize("wrap", ["cause", "context", "ray"])
def test_wrapped_os_errors_are_found(tmp_path, cfg, capsys, monkeypatch, wrap):
    from instructdiffusion_data import writer

    target = str(tmp_path / "out" / "x.parquet")

    def fail(self, *a, **k):
        inner = OSError(errno.EDQUOT, "Disk quota exceeded", target)
        if wrap == "cause":
            raise RuntimeError("shard 0 failed") from inner
        if wrap == "context":
            try:
                raise inner
            except OSError:
                raise RuntimeError("shard 0 failed")  # noqa: B904 - implicit context on purpose
        from ray.exceptions import RayTaskError

        raise RayTaskError("write_shard", "Traceback (most recent call last): ...", inner)

    monkeypatch.setattr(writer.ShardWriter, "write_manifest", fail)
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-ray"]) == 2
    assert one_error_line(capsys) == (f"idd run: error: disk quota exceeded writing {target}: "
                                      "free space or choose another --out")


def test_other_errors_keep_their_traceback(tmp_path, cfg, monkeypatch):
    from instructdiffusion_data import writer

    def bug(self, *a, **k):
        raise ValueError("a real bug")

    monkeypatch.setattr(writer.ShardWriter, "write_manifest", bug)
    with pytest.raises(ValueError, match="a real bug"):
        main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-ray"])

    def missing_input(self, *a, **k):  # ENOENT that is not about the output: more likely a bug
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/opt/models/lama.pt")

    monkeypatch.setattr(writer.ShardWriter, "write_manifest", missing_input)
    with pytest.raises(FileNotFoundError):
        main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-ray"])


def test_output_folder_removed_mid_run_is_one_line(tmp_path, cfg, capsys, monkeypatch):
    from instructdiffusion_data import writer

    target = tmp_path / "out" / "t" / "v1" / "manifest.json"

    def gone(self, *a, **k):
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(target))

    monkeypatch.setattr(writer.ShardWriter, "write_manifest", gone)
    assert main(["run", str(cfg), "--out", str(tmp_path / "out"), "--no-ray"]) == 2
    line = one_error_line(capsys)
    assert line.startswith(f"idd run: error: no such file or directory writing {target}: ")


def test_the_real_command_prints_no_traceback(tmp_path, cfg):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    res = subprocess.run([sys.executable, "-m", "instructdiffusion_data.cli", "run", str(cfg), "--out",
                          str(blocker / "out"), "--no-ray"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2, res.stderr
    assert "Traceback" not in res.stderr
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("idd run: error: not a directory writing ") and str(blocker) in last
    errors = [ln for ln in res.stderr.splitlines() if "error" in ln.lower()]
    assert errors == [last]


def test_describe_os_error_for_callers_that_report_per_shard():
    from instructdiffusion_data.cli import describe_os_error

    e = OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")
    assert describe_os_error(RuntimeError("x"), ["/data/out"]) is None
    assert describe_os_error(e, ["/data/out"]) == (
        "no space left on device writing under /data/out: free space or choose another --out")
    e = PermissionError(errno.EACCES, "Failed to open local file '/data/out/t/v1/train/000001.tar'. Detail: "
                                      "[errno 13] Permission denied")
    assert describe_os_error(e, ["/data/out"]) == ("permission denied on /data/out/t/v1/train/000001.tar: "
                                                   "make it writable or choose another --out")
    group = ExceptionGroup("shards", [ValueError("v"), OSError(errno.EROFS, "Read-only file system", "/ro/x")])
    assert describe_os_error(group).startswith("read-only file system writing /ro/x: choose a writable --out")


def test_command_line_loads_no_model_code():
    """Every `idd` call (the fault suite makes hundreds) builds the whole parser: registering the commands
    must not import torch, diffusers or open_clip (4 s a call), only running a command that needs them."""
    import subprocess
    import sys

    code = ("import sys; from instructdiffusion_data.cli import build_parser; build_parser(); "
            "print(','.join(m for m in ('torch', 'diffusers', 'open_clip', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == ""
