"""InstructPix2Pix, in its prompt-folder release or as parquet.

Folder layout (``clip-filtered-dataset``/``random-sample-dataset``, as ``dataset_creation/
generate_img_dataset.py`` and ``prepare_dataset.py`` of timothybrooks/instruct-pix2pix write it)::

    seeds.json                       [["0000000", ["1734098", ...]], ...]  prompt folders with their seeds
    0000000/prompt.json              {"input": input caption, "edit": instruction, "output": output caption}
    0000000/metadata.jsonl           one line per kept seed: {"seed", "p2p_threshold", "cfg_scale",
                                     "clip_sim_0", "clip_sim_1", "clip_sim_dir", "clip_sim_image"}
    0000000/<seed>_0.jpg             source image
    0000000/<seed>_1.jpg             edited image

An *item* is one prompt folder: its ``prompt.json``, ``metadata.jsonl`` and the images of its seeds
(listed by name, never opened on the driver); a record is one seed. With ``seeds.json``
(``use_seeds_json``) the folders and seeds are the ones it lists (the release's own index; a folder
or image it names that is missing is a dropped record); without it, every prompt folder holding
``<seed>_0``/``<seed>_1`` images, every seed with either image (folders without images are not
pairs: generation kept no sample for them).

The CLIP scores go into ``meta["scores"]`` under their released names (``clip_sim_0``,
``clip_sim_1``, ``clip_sim_dir``, ``clip_sim_image``; a ``clip_sim_direction`` key is read as
``clip_sim_dir``); the stage ``ingest_edit`` filters on them (``min_scores``). A score that is not a
finite number drops the record (``not a finite number`` / ``bad field``, naming it).

Parquet (the Hugging Face ``timbrooks/instructpix2pix-clip-filtered`` files, read one row group at a
time): columns ``original_prompt``, ``original_image``, ``edit_prompt``, ``edited_prompt``,
``edited_image`` (images as ``{bytes, path}`` structs or binary); score columns are read when present.
"""

from __future__ import annotations

import json
import posixpath
import re
from dataclasses import dataclass
from typing import Any, Iterator, Literal

from .. import config as cfgmod
from ..config import check_path
from ..errors import ConfigError
from ..schema import Row
from ..storage import Location, child_path, exists, read_bytes
from . import _edit, _pairs
from ._coco import annotation_inputs
from ._base import (BAD_FIELD, NOT_FINITE, FileGroupSource, RecordSource, Source, SourceConfig, finite, image_path,
                    load_json)

DATASET = "instructpix2pix"
_SEED_IMG = re.compile(r"^(\d+)_([01])\.(jpg|jpeg|png|webp)$", re.IGNORECASE)
PROMPT_MISSING = "prompt.json missing"
PROMPT_BAD = "prompt.json is not a JSON object"
GENERATION_KEYS = ("p2p_threshold", "cfg_scale")
INSTRUCTION_FIELD = "prompt.json:edit"


@dataclass
class IP2PConfig(SourceConfig):
    root: str | None = None  # the prompt-folder dataset (holding seeds.json)
    parquet: str | list[str] | None = None  # parquet file(s), a folder or a glob (the parquet form)
    format: Literal["auto", "folder", "parquet"] = "auto"
    use_seeds_json: bool = True  # enumerate folders and seeds from seeds.json when it exists
    instruction_column: str = "edit_prompt"
    source_column: str = "original_image"
    target_column: str = "edited_image"


def _format(c: IP2PConfig) -> str:
    return c.format if c.format != "auto" else ("parquet" if c.parquet else "folder")


def read_scores(rec: dict) -> tuple[dict[str, float], list[tuple]]:
    """The CLIP scores of a metadata line / parquet row under their released names, and the faults of
    those that are present but unusable (``(class, field, detail)``)."""
    scores: dict[str, float] = {}
    faults: list[tuple] = []
    for key, value in rec.items():
        name = _edit.score_name(key)
        if name not in _edit.IP2P_SCORES or value is None:
            continue
        if finite(value):
            scores[name] = float(value)
        elif isinstance(value, float):
            faults.append((NOT_FINITE, name, {"value": str(value)}))
        else:
            faults.append((BAD_FIELD, name, {"type": type(value).__name__}))
    return scores, faults


class IP2PSource(Source):
    """``type: instructpix2pix``: the folder form is read as file groups, the parquet form as records."""

    name = DATASET
    Config = IP2PConfig

    def __new__(cls, config: IP2PConfig | dict | None = None, *, seed: int = 0):
        if cls is not IP2PSource:
            return super().__new__(cls)
        cfg = cfgmod.build(IP2PConfig, config if config is not None else {}, where=f"source({DATASET})")
        sub = IP2PParquetSource if _format(cfg) == "parquet" else IP2PFolderSource
        return sub(cfg, seed=seed)


class IP2PFolderSource(FileGroupSource):
    name = DATASET
    Config = IP2PConfig

    def validate(self) -> None:
        if not self.config.root:
            raise ConfigError("source.root: required for the folder layout (or set source.parquet)")
        check_path(self.config.root, "source.root", kind="dir")

    def _listing(self) -> list[tuple[str, list[str] | None]]:
        """``(prompt folder, seeds)`` from seeds.json; seeds None when the folder is to be listed."""
        root = self.config.root
        seeds_file = child_path(root, "seeds.json")
        if not (self.config.use_seeds_json and exists(seeds_file, "file")):
            return [(d, None) for d in Location(root).dirs()]
        data = load_json(seeds_file, "source.root")
        if not isinstance(data, list):
            raise ConfigError(f"source.root: {seeds_file}: expected [[prompt folder, [seeds]], ...]")
        out: dict[str, list[str]] = {}
        for i, ent in enumerate(data):
            ok = (isinstance(ent, (list, tuple)) and len(ent) == 2 and isinstance(ent[0], str)
                  and image_path(root, ent[0]) is not None and "/" not in ent[0] and isinstance(ent[1], list)
                  and all(isinstance(s, (str, int)) and not isinstance(s, bool) and str(s).isdigit() for s in ent[1]))
            if not ok:
                raise ConfigError(f"source.root: {seeds_file}: entry {i} is not [prompt folder, [seeds]] ({str(ent)[:80]})")
            seeds = out.setdefault(ent[0], [])  # a folder listed twice: its seeds once each
            seeds += [str(s) for s in ent[1] if str(s) not in seeds]
        return list(out.items())

    def items(self) -> Iterator[list[str]]:
        root = self.config.root
        for name, seeds in self._listing():
            d = child_path(root, name)
            head = [child_path(d, "prompt.json"), child_path(d, "metadata.jsonl")]
            if seeds is None:
                images = [child_path(d, n) for n in Location(d).names() if _SEED_IMG.match(n)]
                if images:
                    yield head + images
            else:
                yield head + [child_path(d, f"{s}_{k}.jpg") for s in seeds for k in (0, 1)]

    # -- one prompt folder ------------------------------------------------------------------------
    def read_item(self, item: list[str]) -> Iterator[Row]:
        prompt_file, meta_file, images = item[0], item[1], item[2:]
        folder = prompt_file.rsplit("/", 1)[0]
        name = _pairs.parts(prompt_file)[-2]
        seeds: dict[str, dict[int, str]] = {}
        for p in images:
            m = _SEED_IMG.match(_pairs.parts(p)[-1])
            if m:
                seeds.setdefault(m.group(1), {})[int(m.group(2))] = p
        prompt, prompt_fault = self._prompt(prompt_file)
        lines = self._metadata(meta_file)
        for seed, paths in seeds.items():
            rid = f"{name}/{seed}"
            src = paths[0] if 0 in paths and exists(paths[0], "file") else _edit.find_image(folder, f"{seed}_0")
            tgt = paths[1] if 1 in paths and exists(paths[1], "file") else _edit.find_image(folder, f"{seed}_1")
            faults: list[tuple] = []
            if prompt_fault:
                faults.append((prompt_fault, INSTRUCTION_FIELD, {"file": prompt_file}))
            rec = lines.get(str(int(seed)))
            scores, score_faults = read_scores(rec) if rec is not None else ({}, [])
            faults += [(cls, f"metadata.jsonl:{fld}", {**d, "file": meta_file}) for cls, fld, d in score_faults]
            if rec is None:
                self.stats["seeds_without_scores"] += 1
            gen = {k: rec[k] for k in GENERATION_KEYS if rec is not None and finite(rec.get(k))}
            yield _edit.edit_record(
                DATASET, rid, prompt.get("edit"), src_ref=_edit.path_ref(src), tgt_ref=_edit.path_ref(tgt),
                file=src or child_path(folder, f"{seed}_0.jpg"), faults=faults, instruction_field=INSTRUCTION_FIELD,
                prompt_id=name, seed=int(seed), scores=scores, generation=gen or None,
                input_caption=_text(prompt.get("input", prompt.get("caption"))), output_caption=_text(prompt.get("output")),
            )

    def _prompt(self, path: str) -> tuple[dict, str | None]:
        try:
            doc = json.loads(read_bytes(path))
        except FileNotFoundError:
            return {}, PROMPT_MISSING
        except (OSError, ValueError):
            return {}, PROMPT_BAD
        return (doc, None) if isinstance(doc, dict) else ({}, PROMPT_BAD)

    def _metadata(self, path: str) -> dict[str, Any]:
        """seed -> its metadata line; lines that cannot be tied to a seed are counted (``bad_metadata_lines``)."""
        out: dict[str, Any] = {}
        try:
            text = read_bytes(path).decode("utf-8", errors="replace")
        except (FileNotFoundError, OSError):
            return out
        for line in text.splitlines():
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                self.stats["bad_metadata_lines"] += 1
                continue
            seed = rec.get("seed") if isinstance(rec, dict) else None
            if isinstance(seed, bool) or not isinstance(seed, (int, str)) or not str(seed).isdigit():
                self.stats["bad_metadata_lines"] += 1
                continue
            out[str(int(seed))] = rec
        return out


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


class IP2PParquetSource(RecordSource):
    name = DATASET
    Config = IP2PConfig

    def validate(self) -> None:
        c = self.config
        if not c.parquet:
            raise ConfigError("source.parquet: required for format: parquet")
        self._schemas = _edit.check_parquet(_edit.parquet_files(c.parquet), "source.parquet")
        for f, schema in self._schemas.items():
            missing = [col for col in (c.instruction_column, c.source_column, c.target_column) if col not in schema.names]
            if missing:
                raise ConfigError(f"source.parquet: {f} has no column {missing[0]!r} (columns: {', '.join(schema.names)})")

    def input_files(self) -> list[str]:
        return annotation_inputs(self, *_edit.parquet_files(self.config.parquet))

    def records(self) -> Iterator[Row]:
        c = self.config
        seen: set[str] = set()
        for f in _edit.parquet_files(c.parquet):
            schema = _edit.open_parquet(f, "source.parquet").schema_arrow
            stem = posixpath.splitext(_pairs.parts(f)[-1])[0]
            for i, rec, err in _edit.iter_parquet(f, _edit.text_columns(schema), "source.parquet"):
                rid, _dup = _edit.unique_id(f"{stem}/{i}", seen, f)  # two files of one name in two folders
                if err is not None:
                    row = _edit.unreadable_row(DATASET, f, i, err)
                    yield row
                    continue
                scores, faults = read_scores(rec)
                yield _edit.edit_record(
                    DATASET, rid, rec.get(c.instruction_column),
                    src_ref={"parquet": f, "row": i, "column": c.source_column},
                    tgt_ref={"parquet": f, "row": i, "column": c.target_column}, file=f, parquet_row=i,
                    faults=faults, scores=scores, input_caption=_text(rec.get("original_prompt")),
                    output_caption=_text(rec.get("edited_prompt")),
                )


SOURCE = IP2PSource
