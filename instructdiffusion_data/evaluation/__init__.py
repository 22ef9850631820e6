"""Editing evaluation and human-alignment candidates (paper sections 3.3 and 4.4, Table 5).

- :mod:`.benchmark`: the benchmark rows (source image, caption, instruction, target caption, category,
  align/eval half) read back from a shard output;
- :mod:`.metrics`: CLIP-Sim (100 x cosine of edited image and target caption, open_clip) and the LAION
  aesthetic score, per sample and per category;
- :mod:`.editor`: any InstructPix2Pix-compatible diffusers model folder run on batches of samples with
  a fixed seed per sample;
- :mod:`.run`: ``idd eval`` (edit, score, table, JSON, grids);
- :mod:`.candidates`: ``idd align candidates`` (edits at several guidance pairs, written as an output the
  auditor groups by benchmark sample).
"""

# (text, image) guidance pairs of ``idd align candidates`` by default; here so the command line can show them
# without importing the model code
DEFAULT_SCALES = "7.5:1.5,7.5:1.2,5.0:1.5,5.0:1.25,3.5:1.5,3.5:1.0"
