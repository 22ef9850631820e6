"""InstructPix2Pix, in its prompt-folder release or as parquet.

Folder layout (``clip-filtered-dataset``/``random-sample-dataset``)::

    seeds.json                       [["0000000", [seed, ...]], ...]  the seeds kept per prompt
    0000000/prompt.json              {"caption": input caption, "edit": instruction, "output": output caption}
    0000000/metadata.jsonl           one line per seed: {"seed", "clip_sim_0", "clip_sim_1",
                                     "clip_sim_direction", "clip_sim_image"}
    0000000/<seed>_0.jpg             source image
    0000000/<seed>_1.jpg             edited image

Without ``seeds.json`` every ``<seed>_0.jpg`` of every prompt folder is a record. The CLIP scores go
into ``meta["scores"]``; the stage ``ingest_edit`` filters on them (``min_scores``).

Parquet (the Hugging Face ``timbrooks/instructpix2pix-clip-filtered`` files): columns
``original_prompt``, ``original_image``, ``edit_prompt``, ``edited_prompt``, ``edited_image``
(images as ``{bytes, path}`` structs or binary).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Literal

import pyarrow as pa

from ..errors import ConfigError
from ..schema import Row, drop, make_key, new_row
from ._base import RecordSource, SourceConfig
from . import _edit

SCORE_KEYS = ("clip_sim_0", "clip_sim_1", "clip_sim_direction", "clip_sim_image")
_SEED_IMG = re.compile(r"^(\d+)_0\.(jpg|jpeg|png)$", re.IGNORECASE)


@dataclass
class IP2PConfig(SourceConfig):
    root: str | None = None  # the prompt-folder dataset (holding seeds.json)
    parquet: str | list[str] | None = None  # parquet file(s), a folder or a glob (the parquet form)
    format: Literal["auto", "folder", "parquet"] = "auto"
    use_seeds_json: bool = True  # enumerate seeds from seeds.json when it exists
    instruction_column: str = "edit_prompt"
    source_column: str = "original_image"
    target_column: str = "edited_image"


class IP2PSource(RecordSource):
    name = "instructpix2pix"
    Config = IP2PConfig

    def _format(self) -> str:
        if self.config.format != "auto":
            return self.config.format
        return "parquet" if self.config.parquet else "folder"

    def validate(self) -> None:
        from ..config import check_path

        fmt = self._format()
        if fmt == "folder":
            if not self.config.root:
                raise ConfigError("source.root: required for the folder layout (or set source.parquet)")
            check_path(self.config.root, "source.root", kind="dir")
        else:
            if not self.config.parquet:
                raise ConfigError("source.parquet: required for format: parquet")
            files = _edit.parquet_files(self.config.parquet)
            if not files:
                raise ConfigError(f"source.parquet: no parquet files match {self.config.parquet}")
            for f in files:
                check_path(str(f), "source.parquet", kind="file")

    def records(self) -> Iterator[Row]:
        yield from (self._folder() if self._format() == "folder" else self._parquet())

    # -- folder layout -------------------------------------------------------------------------
    def _folder(self) -> Iterator[Row]:
        root = Path(self.config.root).resolve()
        seeds_file = root / "seeds.json"
        if self.config.use_seeds_json and seeds_file.is_file():
            try:
                listing = [(str(name), [int(s) for s in seeds]) for name, seeds in json.loads(seeds_file.read_text())]
            except (ValueError, TypeError) as e:
                raise ConfigError(f"source.root: {seeds_file}: expected [[prompt folder, [seeds]], ...] ({e})") from None
        else:
            listing = []
            for d in sorted(p for p in root.iterdir() if p.is_dir()):
                seeds = sorted(int(m.group(1)) for f in d.iterdir() if (m := _SEED_IMG.match(f.name)))
                listing.append((d.name, seeds))
        for name, seeds in listing:
            d = root / name
            prompt, problem = {}, None
            try:
                prompt = json.loads((d / "prompt.json").read_text())
                if not isinstance(prompt, dict):
                    problem = "prompt.json is not a mapping"
            except FileNotFoundError:
                problem = "prompt.json missing"
            except (ValueError, OSError) as e:
                problem = f"prompt.json unreadable ({type(e).__name__})"
            scores = self._scores(d / "metadata.jsonl")
            for seed in seeds:
                rid = f"{name}/{seed}"
                src = _edit.find_image(d, f"{seed}_0")
                tgt = _edit.find_image(d, f"{seed}_1")
                row = _edit.edit_record(
                    "instructpix2pix", rid, prompt.get("edit") if not problem else "",
                    src_ref=_edit.path_ref(src), tgt_ref=_edit.path_ref(tgt),
                    file=str(src or d / f"{seed}_0.jpg"), prompt_id=name, seed=seed,
                    input_caption=prompt.get("caption") or prompt.get("input"), output_caption=prompt.get("output"),
                    scores={k: float(v) for k, v in scores.get(seed, {}).items() if k in SCORE_KEYS and v is not None},
                )
                if problem:
                    row["keep"], row["drop_reason"] = True, None
                    drop(row, f"{problem} (record={rid}, file={d / 'prompt.json'})")
                yield row

    @staticmethod
    def _scores(path: Path) -> dict[int, dict]:
        out: dict[int, dict] = {}
        if not path.is_file():
            return out
        for line in path.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
                out[int(rec["seed"])] = rec
            except (ValueError, KeyError, TypeError):
                continue  # a damaged score line only loses that seed's scores (the filter then skips it)
        return out

    # -- parquet form --------------------------------------------------------------------------
    def _parquet(self) -> Iterator[Row]:
        c = self.config
        for f in _edit.parquet_files(c.parquet):
            try:
                import pyarrow.parquet as pq

                schema = pq.read_schema(f)
            except (OSError, pa.ArrowException) as e:
                row = new_row(key=make_key("instructpix2pix", f.name, "rec"), task="edit", dataset="instructpix2pix",
                              meta={"file": str(f), "record_id": f.name})
                yield drop(row, f"parquet file unreadable ({type(e).__name__}) (file={f})")
                continue
            missing = [col for col in (c.instruction_column, c.source_column, c.target_column) if col not in schema.names]
            if missing:
                raise ConfigError(f"source.parquet: {f} has no column {missing[0]!r} (columns: {', '.join(schema.names)})")
            text_cols = [n for n in schema.names if not _edit.is_image_type(schema.field(n).type)]
            for i, rec in _edit.iter_parquet(f, text_cols):
                if _edit.READ_ERROR in rec:
                    yield _edit.read_error_record("instructpix2pix", f, i, rec[_edit.READ_ERROR])
                    continue
                rid = f"{f.stem}/{i}"
                yield _edit.edit_record(
                    "instructpix2pix", rid, rec.get(c.instruction_column),
                    src_ref={"parquet": str(f), "row": i, "column": c.source_column},
                    tgt_ref={"parquet": str(f), "row": i, "column": c.target_column}, file=str(f), parquet_row=i,
                    input_caption=rec.get("original_prompt"), output_caption=rec.get("edited_prompt"),
                    scores={k: float(rec[k]) for k in SCORE_KEYS if isinstance(rec.get(k), (int, float))},
                )


SOURCE = IP2PSource
