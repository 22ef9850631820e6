"""A mixture entry without ``output`` takes the newest version of its output (v10 after v9)."""

from instructdiffusion_data.commands.mix import _newest_version
from instructdiffusion_data.config import PipelineConfig, build
from instructdiffusion_data.runner import run


def test_newest_version_is_the_default_output(tmp_path):
    (tmp_path / "ann.txt").write_text("a\nb\n")
    for v in ("v2", "v10", "v9"):
        run(build(PipelineConfig, {"name": "lines", "version": v,
                                   "source": {"type": "tests.helpers_core:LinesSource", "path": str(tmp_path / "ann.txt")},
                                   "stages": [{"type": "tests.helpers_core:PaintStage"}]}),
            out=str(tmp_path / "o"), use_ray=False)
    (tmp_path / "o" / "lines" / "v99").mkdir()  # not an output: no manifest
    assert _newest_version(tmp_path / "o", "lines") == "lines/v10"
