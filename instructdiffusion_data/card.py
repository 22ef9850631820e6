"""Dataset card for an output root, and the per-source licence table (docs/shard-format.md, "Stock readers").

``idd card ROOT`` writes ``ROOT/README.md``: a Hugging Face dataset card whose YAML header declares one
*config* per output (``ROOT/<name>/<version>``, its current generation) with exactly the train tars its
manifest lists and the *features* of every member its rows carry, so that ::

    datasets.load_dataset(ROOT, "keypoints_coco", split="train")

loads every kept row with its images. Why the features must be declared: the ``webdataset`` builder of
``datasets`` infers the columns from the first five samples of the first tar when none are given. Over
several outputs (``load_dataset("webdataset", data_files=...)``) that is the first output's member set:
``mask.png`` vanishes when the first samples have no mask, ``src.jpg`` rows come back without an image
when the first shard wrote ``src.png``, and the builder silently drops every member it was not told
about. With declared features it fills a declared but absent member with None and drops nothing that is
declared; the card declares the union of the member names found in *every* train sidecar of the output
(``src.jpg`` and ``src.png`` when both occur), and each config's split size, which ``datasets`` checks
after loading (a count that differs raises ``NonMatchingSplitsSizesError``). One config per output: the
configs never mix outputs, and ``load_dataset(ROOT)`` without a config name refuses.

The rest of the card: task categories, licence per source dataset (:data:`.licences.SOURCES`), citations (the
source datasets and InstructDiffusion, Geng et al. 2023) and how to read the outputs with webdataset,
DuckDB and Ray. The card is written atomically (temporary name, then rename) and only over a README.md
that ``idd card`` wrote itself (``--force`` otherwise).

The licence and citation table is :mod:`.licences`; finding and reading the outputs under the root is
:mod:`.card_outputs`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .card_outputs import IMAGE_ROLES, OutputCard, assign_config_names, find_outputs, read_output
from .licences import INSTRUCTDIFFUSION_BIB, SOURCES, UNKNOWN_LICENCE

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
CARD_MARKER = "<!-- written by `idd card`: rerun it to update; edits here are overwritten -->"


# --------------------------------------------------------------------------------------------------
# The card


_IMAGE_EXTS = {"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"}

_TASK_CATEGORIES = {
    "keypoint": ("image-to-image", "keypoint-detection"),
    "semantic_seg": ("image-to-image", "image-segmentation"),
    "referring_seg": ("image-to-image", "image-segmentation"),
}


def features_for(members: set[str]) -> list[dict]:
    """The ``dataset_info.features`` of a config (``datasets`` YAML form): every image member as an
    image, ``txt`` a string, ``json`` a JSON value, plus the builder's ``__key__`` and ``__url__``."""
    feats = [{"name": "__key__", "dtype": "string"}]

    def order(m: str) -> tuple:
        role = m.split(".", 1)[0]
        return (IMAGE_ROLES.index(role) if role in IMAGE_ROLES else len(IMAGE_ROLES), m)

    for m in sorted((m for m in members if m not in ("txt", "json")), key=order):
        ext = m.rsplit(".", 1)[-1].lower()
        feats.append({"name": m, "dtype": "image" if ext in _IMAGE_EXTS else "binary"})
    feats.append({"name": "txt", "dtype": "string"})
    feats.append({"name": "json", "dtype": "json"})
    feats.append({"name": "__url__", "dtype": "string"})
    return feats


def _size_category(n: int) -> str:
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
                         (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B")):
        if n < limit:
            return label
    return "1B<n<10B"


def header_for(outputs: list[OutputCard], *, with_rejected: bool = False) -> dict:
    """The YAML header (a dict) of the card."""
    datasets = sorted({d for o in outputs for d in o.datasets})
    hub: list[str] = []
    for d in datasets:
        for h in SOURCES[d].hub if d in SOURCES else ("unknown",):
            if h not in hub:
                hub.append(h)
    tasks = sorted({t for o in outputs for t in o.tasks})
    cats: list[str] = []
    for t in tasks:
        for c in _TASK_CATEGORIES.get(t, ("image-to-image",)):
            if c not in cats:
                cats.append(c)
    header: dict[str, Any] = {
        "pretty_name": "InstructDiffusion training data (instructdiffusion-data)",
        "license": hub or ["unknown"],
    }
    if "other" in hub:
        header["license_name"] = "per-source-terms"
        header["license_link"] = CARD_FILE  # the table of licences per source dataset in this card
    header.update({
        "language": ["en"],
        "task_categories": cats or ["image-to-image"],
        "tags": ["instruction-based-image-editing", "instructdiffusion", "webdataset"],
        "size_categories": [_size_category(sum(o.train_rows for o in outputs))],
        "configs": [],
        "dataset_info": [],
    })
    for o in outputs:
        files = [{"split": "train", "path": list(o.train_tars)}]
        members = set(o.members)
        split_info = [{"name": "train", "num_bytes": o.train_bytes, "num_examples": o.train_rows}]
        if with_rejected and o.rejected_tars:
            files.append({"split": "rejected", "path": list(o.rejected_tars)})
            members |= o.rejected_members
            split_info.append({"name": "rejected", "num_bytes": o.rejected_bytes, "num_examples": o.rejected_rows})
        header["configs"].append({"config_name": o.config_name, "data_files": files})
        header["dataset_info"].append({"config_name": o.config_name, "features": features_for(members),
                                       "splits": split_info})
    return header


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def body_for(outputs: list[OutputCard], skipped: list[tuple[str, str]], *, with_rejected: bool = False) -> str:
    """The markdown body of the card."""
    lines = [CARD_MARKER, "", "# InstructDiffusion training data", "",
             "Instruction-driven image-editing pairs and vision-task pairs in the spirit of *InstructDiffusion* "
             "(Geng et al., 2023, arXiv:2309.03895), written by the `instructdiffusion-data` engine "
             "(format `instructdiffusion-data/2`, see its `docs/shard-format.md`). Every config below is one output "
             "(one pipeline at one version, its current generation); its `train` split holds the kept rows.",
             "Written by `idd card` from the outputs' manifests and sidecars (the same outputs give the same card).", "",
             "## Configs", "",
             "| config | output | generation | kept rows | rejected rows | tasks | datasets | members |",
             "|---|---|---|---|---|---|---|---|"]
    for o in outputs:
        lines.append("| `{}` | `{}` | {} | {} | {} | {} | {} | {} |".format(
            o.config_name, _md_escape(o.rel or "."), o.generation, o.train_rows, o.rejected_rows,
            ", ".join(f"{k} {v}" for k, v in sorted(o.tasks.items())) or "-",
            ", ".join(f"{k} {v}" for k, v in sorted(o.datasets.items())) or "-",
            ", ".join(f"`{m}`" for m in sorted(o.members))))
    for rel, why in skipped:
        lines.append(f"| - | `{_md_escape(rel)}` | | | | | | not a config: {_md_escape(why)} |")
    split_note = "; `rejected` split: the dropped rows (some without images)" if with_rejected else ""
    lines += ["",
              "Columns: one per tar member, named as in the tar (`src.jpg`, `src.png`, `tgt.jpg`, `mask.png`, `txt`, "
              "`json`), plus `__key__` and `__url__`. A member absent from a row is None (e.g. `mask.png` where no "
              "mask was written); an output whose rows carry both `src.jpg` and `src.png` has both columns and each "
              "row fills one. `json` holds task, dataset, keep, drop class and the row's `meta` (provenance, "
              "what was drawn, verification, scores)" + split_note + ".",
              "",
              "## Loading", "",
              "```python",
              "import datasets",
              f"ds = datasets.load_dataset(\"path/to/this/folder\", \"{outputs[0].config_name if outputs else 'CONFIG'}\", "
              "split=\"train\")  # one config = one output",
              "```", "",
              "Always name a config: each declares its own members (features) and row count, which `datasets` checks. "
              "Do not load several outputs through `load_dataset(\"webdataset\", data_files=[...])`: without declared "
              "features the builder takes the columns of the first five samples and silently drops every other "
              "member (masks, the other image extension).", "",
              "WebDataset: `webdataset.WebDataset(tars, shardshuffle=False).decode(\"pil\")` over a config's tars. "
              "Ray: `ray.data.read_webdataset(tars)`. DuckDB over the parquet sidecars (every column but the image "
              "bytes, typed score columns, member offsets into the tar):", "",
              "```sql",
              "select task, count(*) from read_parquet([" + ", ".join(
                  f"'{d}/*.parquet'" for d in sorted({p.rsplit("/", 1)[0] for o in outputs for p in o.train_parquets}))
              + "]) group by task;",
              "```", ""]
    datasets = sorted({d for o in outputs for d in o.datasets})
    lines += ["## Licences", "",
              "Each row carries its source's licence id in the sidecar column `licence` (and `meta.provenance`) and the "
              "source record in `source_id`. The terms of every source apply to the rows made from it; "
              "this collection adds no rights. \"see source\": the terms were not confirmed while writing this "
              "table; read them at the link before use.", "",
              "| dataset | licence id | terms | source | rows (train) |", "|---|---|---|---|---|"]
    counts: dict[str, int] = {}
    for o in outputs:
        for d, n in o.datasets.items():
            counts[d] = counts.get(d, 0) + n
    for d in datasets:
        s = SOURCES.get(d)
        if s is None:
            lines.append(f"| `{_md_escape(d)}` | {UNKNOWN_LICENCE} | not in the engine's table: see the data's own "
                         f"terms | - | {counts.get(d, 0)} |")
            continue
        terms = s.terms + (f" (checked: {s.checked})" if s.checked else "")
        lines.append(f"| `{d}` ({_md_escape(s.name)}) | `{s.licence}` | {_md_escape(terms)} | <{s.url}> | "
                     f"{counts.get(d, 0)} |")
    row_licences: dict[str, int] = {}
    for o in outputs:
        for k, v in o.licences.items():
            row_licences[k] = row_licences.get(k, 0) + v
    if row_licences.get("(none)"):
        lines += ["", f"{row_licences['(none)']} kept rows have no `licence` value in their sidecar (written before "
                      "provenance was filled): their dataset's row above applies."]
    lines += ["", "## Takedown", "",
              "To remove every row made from one source image or record: `idd takedown <this folder> --source ID` "
              "(a new generation of each affected output with the rows moved to `rejected` and their images removed; "
              "the card is rewritten).", "",
              "## Citation", "", "```bibtex", INSTRUCTDIFFUSION_BIB]
    seen: set[str] = set()
    for d in datasets:
        s = SOURCES.get(d)
        if s is None:
            continue
        for entry in re.split(r"\n(?=@)", s.bibtex.strip()):
            key = entry.split("{", 1)[1].split(",", 1)[0]
            if key not in seen:
                seen.add(key)
                lines.append(entry)
    lines += ["```", ""]
    return "\n".join(lines)


def render_card(header: dict, body: str) -> str:
    import yaml

    text = yaml.safe_dump(header, sort_keys=False, allow_unicode=True, width=100)
    return f"---\n{text}---\n\n{body}"


def check_card(text: str) -> None:
    """Parse the card as the Hugging Face hub does (``huggingface_hub.DatasetCard``) when it is installed,
    else its YAML header; ValueError on failure."""
    import yaml

    try:
        from huggingface_hub import DatasetCard
    except ImportError:
        DatasetCard = None
    if DatasetCard is not None:
        card = DatasetCard(text)
        data = card.data.to_dict()
    else:
        m = re.match(r"^---\n(.*?)\n---\n", text, re.S)
        if not m:
            raise ValueError("card has no YAML header")
        data = yaml.safe_load(m.group(1))
    if not isinstance(data, dict) or "configs" not in data:
        raise ValueError("card header has no configs")


def is_idd_card(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(1 << 20)
    except FileNotFoundError:
        return False
    return CARD_MARKER in head


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


@dataclass
class CardResult:
    path: Path
    outputs: list[OutputCard]
    skipped: list[tuple[str, str]]
    text: str


def build_card(root: str | os.PathLike, *, with_rejected: bool = False) -> CardResult:
    """The card of every output under ``root`` (not written)."""
    from .errors import UserError
    from .storage import is_uri

    if is_uri(str(root)):
        raise UserError(f"{root}: idd card works on a local folder (copy or mount the outputs)")
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    outs, skipped = [], []
    for d in find_outputs(root):
        oc = read_output(root, d, with_rejected=with_rejected)
        if not oc.train_rows:
            skipped.append((oc.rel or ".", "no kept rows"))
            continue
        outs.append(oc)
    if not outs:
        raise UserError(f"{root}: no output with kept rows below (an output is <name>/<version>/ with manifest.json)")
    assign_config_names(outs)
    header = header_for(outs, with_rejected=with_rejected)
    text = render_card(header, body_for(outs, skipped, with_rejected=with_rejected))
    check_card(text)
    return CardResult(root / CARD_FILE, outs, skipped, text)


def write_card(root: str | os.PathLike, *, force: bool = False, with_rejected: bool = False) -> CardResult:
    """Write ``root/README.md`` (atomically); refuses to replace a README.md it did not write unless ``force``."""
    from .errors import UserError

    res = build_card(root, with_rejected=with_rejected)
    if res.path.exists() and not is_idd_card(res.path) and not force:
        raise UserError(f"{res.path}: exists and was not written by idd card (--force replaces it)")
    _write_atomic(res.path, res.text)
    log.info("%s: card for %d outputs", res.path, len(res.outputs))
    return res


def card_summary(res: CardResult) -> dict:
    return {"card": str(res.path),
            "configs": {o.config_name: {"output": o.rel or ".", "generation": o.generation, "train_rows": o.train_rows,
                                        "members": sorted(o.members)} for o in res.outputs},
            "skipped": dict(res.skipped)}


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
