"""Demo InstructPix2Pix in both released forms:

- ``instructpix2pix/clip-filtered-dataset/``: ``seeds.json`` (``[[prompt folder, [seed, ...]], ...]``,
  seeds as text, as ``prepare_dataset.py`` writes it), ``<prompt>/prompt.json`` (``input``, ``edit``,
  ``output``), ``<prompt>/metadata.jsonl`` (per seed: ``seed``, ``p2p_threshold``, ``cfg_scale``,
  ``clip_sim_0``, ``clip_sim_1``, ``clip_sim_dir``, ``clip_sim_image``: the names
  ``generate_img_dataset.py`` writes), ``<prompt>/<seed>_0.jpg`` / ``<seed>_1.jpg``;
- ``instructpix2pix/data/train-00000-of-00001.parquet`` (``original_prompt``, ``original_image``,
  ``edit_prompt``, ``edited_prompt``, ``edited_image``; images as ``{bytes, path}`` structs).

Bad input on purpose: one prompt with an empty edit, one seed whose CLIP direction score is low
(filtered), and in the parquet one row without edited image and one without edit prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .. import imageio
from . import _figures as fig

SIZE = 256


def generate(out: Path, n: int, seed: int) -> dict:
    root = Path(out) / "instructpix2pix"
    rng = np.random.default_rng([seed, 301])
    ds = root / "clip-filtered-dataset"
    prompts = max(3, n // 4)
    listing = []
    for p in range(prompts):
        name = f"{p:07d}"
        seeds = sorted(int(s) for s in rng.choice(10**6, 2, replace=False))
        kind = str(rng.choice(["replace", "remove", "add", "recolor"]))
        lines = []
        edit_text = None
        for j, s in enumerate(seeds):
            e = fig.edit_pair(rng, SIZE, SIZE, kind)
            edit_text = edit_text or e["instruction"]
            fig.write_jpg(ds / name / f"{s}_0.jpg", e["src"])
            fig.write_jpg(ds / name / f"{s}_1.jpg", e["tgt"])
            direction = 0.05 if (p == 1 and j == 1) else round(float(rng.uniform(0.21, 0.45)), 4)
            lines.append({"seed": s, "p2p_threshold": 0.5, "cfg_scale": 7.5,
                          "clip_sim_0": round(float(rng.uniform(0.2, 0.35)), 4),
                          "clip_sim_1": round(float(rng.uniform(0.2, 0.35)), 4),
                          "clip_sim_dir": direction, "clip_sim_image": round(float(rng.uniform(0.76, 0.95)), 4)})
            caption_in, caption_out = e["input_caption"], e["output_caption"]
        prompt = {"input": caption_in, "edit": "" if p == 2 else edit_text, "output": caption_out}
        (ds / name / "prompt.json").write_text(json.dumps(prompt))
        (ds / name / "metadata.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
        listing.append([name, sorted(str(s) for s in seeds)])  # file-name order, as prepare_dataset.py lists them
    (ds / "seeds.json").write_text(json.dumps(listing))

    rows = []
    for i in range(max(4, n // 6)):
        e = fig.edit_pair(rng, SIZE, SIZE)
        rows.append({"original_prompt": e["input_caption"],
                     "original_image": {"bytes": imageio.encode_jpeg(e["src"], 92), "path": None},
                     "edit_prompt": None if i == 1 else e["instruction"], "edited_prompt": e["output_caption"],
                     "edited_image": None if i == 2 else {"bytes": imageio.encode_jpeg(e["tgt"], 92), "path": None}})
    img_t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    schema = pa.schema([("original_prompt", pa.string()), ("original_image", img_t), ("edit_prompt", pa.string()),
                        ("edited_prompt", pa.string()), ("edited_image", img_t)])
    (root / "data").mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), root / "data" / "train-00000-of-00001.parquet",
                   row_group_size=4)
    return {"prompts": prompts, "pairs": 2 * prompts, "parquet_rows": len(rows)}
