"""``idd instructions expand`` against a real HTTP server: placeholders intact, duplicates removed, cached."""

import json

from instructdiffusion_data import cli
from instructdiffusion_data.instructions import load_templates
from instructdiffusion_data.llm.expand import check_candidate, placeholders, similar

from .helpers_llm import FakeOpenAIServer

ORIGINALS = ["Remove the {phrase}.", "Erase the {phrase}.", "Get rid of the {phrase}.",
             "Remove the {phrase} and keep everything else unchanged."]


def _write_task(folder):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "edit_remove.txt").write_text("# hand-written\n" + "\n".join(ORIGINALS) + "\n")


def test_expand_writes_reviewed_file_and_rerun_is_free(tmp_path, capsys):
    folder = tmp_path / "instructions"
    _write_task(folder)
    with FakeOpenAIServer() as srv:
        argv = ["instructions", "expand", "--task", "edit_remove", "--n", "5", "--dir", str(folder),
                "--base-url", srv.base_url, "--model", "test-model", "--cache", str(tmp_path / "c.sqlite")]
        assert cli.main(argv) == 0
        report = capsys.readouterr().out
        assert len(srv.chat_requests()) == 3  # two new templates per answer
        out = folder / "edit_remove.expanded.txt"
        lines = [ln for ln in out.read_text().splitlines() if ln and not ln.startswith("#")]
        assert lines[:4] == ORIGINALS
        new = lines[4:]
        assert new == ["Could you make the {phrase} vanish from this shot?", "I want the {phrase} gone.",
                       "Scrub out the {phrase}, please.", "Let's lose the {phrase}.", "Photoshop the {phrase} away."]
        assert all(placeholders(t) == {"phrase"} for t in lines)
        for reason in ("duplicate", "near duplicate", "placeholders changed", "refusal"):
            assert f"  {reason}\n" in report
        assert "5 new templates" in report
        # pipelines now read the expanded file
        assert load_templates("edit_remove", folder) == lines
        first = out.read_bytes()
        # a rerun is served from the cache: no request, same file
        assert cli.main(argv) == 0
        assert len(srv.chat_requests()) == 3 and out.read_bytes() == first
        assert "3 cache hits" in capsys.readouterr().out
        # the cache report: answers held per model and what the expansion spent
        assert cli.main(["instructions", "cache", str(tmp_path / "c.sqlite")]) == 0
        rep = json.loads(capsys.readouterr().out)
        assert rep["answers"][0]["model"] == "test-model" and rep["answers"][0]["count"] == 3
        assert rep["spent"] == [{"scope": "expand:edit_remove", "requests": 3,
                                 "tokens": rep["answers"][0]["prompt_tokens"] + rep["answers"][0]["completion_tokens"]}]


def test_expand_needs_an_endpoint_and_a_task(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("IDD_LLM_BASE_URL", raising=False)
    _write_task(tmp_path)
    assert cli.main(["instructions", "expand", "--task", "edit_remove", "--dir", str(tmp_path)]) == 2
    assert "no LLM endpoint" in capsys.readouterr().err
    assert cli.main(["instructions", "expand", "--task", "nope", "--dir", str(tmp_path), "--base-url", "http://x/v1"]) == 2
    assert "no templates for task 'nope'" in capsys.readouterr().err


def test_candidate_rules():
    allowed = {frozenset({"joint", "color"}), frozenset({"joint"})}
    kept = ["Circle the {joint} in {color}."]
    assert check_candidate("Draw a {color} ring around the {joint}.", allowed, kept) is None
    assert check_candidate("Mark the {joint}.", allowed, kept) is None
    assert check_candidate("Circle the {joint} in {colour}.", allowed, kept) == "placeholders changed"
    assert check_candidate("Circle the {joint in red.", allowed, kept) == "broken placeholder"
    assert check_candidate("circle the {joint} in {color}!", allowed, kept) == "duplicate"
    assert check_candidate("", allowed, kept) == "empty"
    assert similar("Circle the {joint} in {color} please.", kept[0], 0.8, 0.92)
    assert not similar("Draw a {color} ring around the {joint}.", kept[0], 0.8, 0.92)
