"""Several processes, data side (issue 17, item 6): with world = 2 the ranks read different data
(distinct seeds over resampled shards; disjoint shards covering each epoch in epoch mode), and each
rank's saved stream state resumes that rank exactly. Adaptation rows (issue 18): target and caption,
no source, through decode, the dataset and collate."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("webdataset")
torch = pytest.importorskip("torch")

from instructdiffusion_data import imageio
from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.schema import make_key, new_row, rows_to_table, table_to_rows
from instructdiffusion_data.writer import ShardWriter
from tests.helpers_trainer import make_output, take_batches
from trainer.data import (DataConfig, Mixture, MixtureDataset, StreamState, collate, decode_pair, make_loader,
                          state_file)
from trainer.datasets import specs_from_outputs
from trainer.model import make_tiny_tokenizer

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


@pytest.fixture(scope="module")
def outs(tmp_path_factory):
    root = tmp_path_factory.mktemp("ranks")
    # equal shards: a 6 x 4 samples, b 4 x 5 samples
    return {"a": make_output(root, "a", 24, shards=6, seed=1, size=(24, 32)),
            "b": make_output(root, "b", 20, shards=4, seed=2, size=(24, 32))}


def _keys(ds, n):
    return [s["key"] for _, s in zip(range(n), ds)]


def test_ranks_draw_distinct_streams_over_resampled_shards(outs, tokenizer):
    specs = specs_from_outputs([str(outs["a"]), str(outs["b"])], {})
    cfg = DataConfig(resolution=16, num_workers=0, shuffle_buffer=8, shuffle_initial=4)
    runs = {r: [s for _, s in zip(range(60), MixtureDataset(specs, cfg, tokenizer, seed=7, rank=r, world=2))]
            for r in (0, 1)}
    k0, k1 = ([s["key"] for s in runs[r]] for r in (0, 1))
    assert k0 != k1
    # as different as two independent draws: few positions hold the same sample
    assert sum(a == b for a, b in zip(k0, k1)) < 10
    for r in (0, 1):  # each rank still reads both datasets and many samples
        assert {s["dataset"] for s in runs[r]} == {0, 1} and len(set(s["key"] for s in runs[r])) > 25
    # the same rank again: the same stream (a pure function of seed, rank, worker, generation)
    again = _keys(MixtureDataset(specs, cfg, tokenizer, seed=7, rank=1, world=2), 60)
    assert again == k1
    # the shard draws themselves differ per rank
    first = {}
    for r in (0, 1):
        mix = Mixture(specs[:1], cfg, seed=7, rank=r, world=2, worker=0, num_workers=1)
        first[r] = [raw["__url__"] for _, (_, raw) in zip(range(40), mix)]
    assert first[0] != first[1]


def _by_dataset(ds, shares, limit=400):
    """The first ``shares[d]`` samples of each dataset ``d`` a rank's stream yields, in order."""
    got = {d: [] for d in shares}
    for _, s in zip(range(limit), ds):
        d = s["dataset"]
        if len(got[d]) < shares[d]:
            got[d].append(s["key"])
        if all(len(got[d]) == shares[d] for d in shares):
            return got
    raise AssertionError(f"stream did not reach {shares} in {limit} samples: {({d: len(v) for d, v in got.items()})}")


@pytest.mark.parametrize("epochs", [1, 2])
def test_epoch_mode_splits_by_rank_and_covers_each_epoch(outs, tokenizer, epochs):
    specs = specs_from_outputs([str(outs["a"]), str(outs["b"])], {})
    cfg = DataConfig(resolution=16, num_workers=0, resampled=False, shuffle_buffer=0)
    total = {0: 24, 1: 20}
    per = {r: _by_dataset(MixtureDataset(specs, cfg, tokenizer, seed=3, rank=r, world=2),
                          {d: epochs * n // 2 for d, n in total.items()}) for r in (0, 1)}
    for d, n in total.items():
        for e in range(epochs):  # every epoch of every dataset: the two ranks split it without overlap
            half = n // 2
            r0 = per[0][d][e * half:(e + 1) * half]
            r1 = per[1][d][e * half:(e + 1) * half]
            assert not set(r0) & set(r1), (d, e)
            assert len(set(r0) | set(r1)) == n, (d, e)
    # 2 ranks x 2 loader workers over b's 4 shards of 5: one shard per worker and epoch, four disjoint
    # quarters that cover the epoch
    quarters = []
    for r in (0, 1):
        for w in (0, 1):
            mix = Mixture(specs[1:], cfg, seed=3, rank=r, world=2, worker=w, num_workers=2)
            quarters.append([raw["__key__"] for _, (_, raw) in zip(range(5 * epochs), mix)])
    for e in range(epochs):
        part = [q[e * 5:(e + 1) * 5] for q in quarters]
        flat = [k for q in part for k in q]
        assert len(flat) == len(set(flat)) == 20


@pytest.mark.parametrize("workers", [0, 2])
def test_each_rank_resumes_its_own_stream(outs, tokenizer, tmp_path, workers):
    specs = specs_from_outputs([str(outs["a"]), str(outs["b"])], {})
    cfg = DataConfig(resolution=16, num_workers=workers, shuffle_buffer=4, shuffle_initial=2, prefetch_factor=2)

    def batches(state, rank, n):
        return take_batches(make_loader(MixtureDataset(specs, cfg, tokenizer, seed=5, rank=rank, world=2,
                                                       state=state), 3), state, n)

    full = {r: batches(StreamState(seed=5), r, 6) for r in (0, 1)}
    assert [k for k, _ in full[0]] != [k for k, _ in full[1]]
    # both ranks run 2 batches and checkpoint, each into its own file, as the loop does
    ck = tmp_path / "checkpoint-2"
    ck.mkdir()
    first = {}
    for r in (0, 1):
        st = StreamState(seed=5)
        first[r] = batches(st, r, 2)
        assert st.rank == r and st.layout == [2, max(1, workers)]
        (ck / state_file(r)).write_text(json.dumps({"step": 2, "stream": st.to_dict()}))
    assert sorted(p.name for p in ck.iterdir()) == ["trainer_state_rank0.json", "trainer_state_rank1.json"]
    for r in (0, 1):
        saved = json.loads((ck / state_file(r)).read_text())["stream"]
        st = StreamState.from_dict(saved).for_resume("replay", 10_000, layout=[2, max(1, workers)])
        rest = batches(st, r, 4)
        assert [k for k, _ in first[r] + rest] == [k for k, _ in full[r]]
        assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first[r] + rest, full[r]))  # same crops too
    # a rank given another rank's state refuses it (one line) instead of replaying the wrong stream
    other = StreamState.from_dict(json.loads((ck / state_file(0)).read_text())["stream"])
    with pytest.raises(ConfigError, match="rank 0 given to rank 1"):
        MixtureDataset(specs, cfg, tokenizer, seed=5, rank=1, world=2, state=other)
    with pytest.raises(ValueError, match="rank 2 is not in 0..1"):
        MixtureDataset(specs, cfg, tokenizer, seed=5, rank=2, world=2)


# --- adaptation rows ------------------------------------------------------------------------------

def _adapt_output(root: Path, n: int = 6) -> tuple[Path, list[dict]]:
    """Keypoint rows rendered by the real stage, turned into adaptation rows by adapt_caption
    (annotation captions), written by the shard writer; plus two keypoint task rows in the same output."""
    from instructdiffusion_data.stages.adapt_caption import AdaptCaption
    from instructdiffusion_data.stages.render_keypoints import RenderKeypoints

    rng = np.random.default_rng(0)
    recs = []
    for i in range(n):
        p = root / f"img{i}.png"
        p.write_bytes(imageio.encode_png(rng.integers(60, 190, (48, 64, 3), dtype=np.uint8)))
        joints = [{"name": "nose", "x": 20.0, "y": 20.0, "v": 2}, {"name": "left knee", "x": 45.0, "y": 30.0, "v": 2}]
        recs.append(new_row(key=make_key("kp", f"r{i}", "rec"), task="keypoint", dataset="kp",
                            meta={"file": str(p), "record_id": f"r{i}", "joints": joints, "bbox": [5, 5, 50, 40],
                                  "people": [[5, 5, 50, 40]]}))
    st = RenderKeypoints({"tgt_format": "png", "min_joints": 2, "max_joints": 2, "radius_frac": 0.06})
    task_rows = table_to_rows(st(rows_to_table(recs)))
    adapt_rows = table_to_rows(AdaptCaption({})(rows_to_table([dict(r) for r in task_rows[2:]])))
    assert all(r["keep"] and r["task"] == "adapt" and r["src"] is None for r in adapt_rows)
    out = root / "adapt_kp" / "v1"
    w = ShardWriter(out)
    w.write_shard(0, adapt_rows + task_rows[:2])
    w.write_manifest(config={"name": "adapt_kp"}, extra={"name": "adapt_kp", "version": "v1"})
    return out, adapt_rows


def test_adaptation_rows_decode_stream_and_collate(tmp_path, tokenizer, outs):
    import webdataset as wds

    out, adapt_rows = _adapt_output(tmp_path)
    tar = next((out / "train").glob("*.tar"))
    raws = {s["__key__"]: s for s in wds.WebDataset(str(tar), shardshuffle=False)}
    row = adapt_rows[0]
    src, tgt, text, doc = decode_pair(raws[row["key"]])
    assert src is None and tgt.shape == (48, 64, 3) and doc["task"] == "adapt"
    assert text == row["instruction"] and text.lower().startswith(row["meta"]["adapt"]["caption"].lower())  # the caption, in txt
    specs = specs_from_outputs([str(out)], {})
    assert specs[0].tasks == {"adapt": len(adapt_rows), "keypoint": 2}
    cfg = DataConfig(resolution=32, num_workers=0, shuffle_buffer=0)
    seen = [s for _, s in zip(range(3 * len(adapt_rows)), MixtureDataset(specs, cfg, tokenizer, seed=0, rows="adapt"))]
    assert {s["key"] for s in seen} == {r["key"] for r in adapt_rows}  # the task rows are left out
    assert all("src" not in s and s["has_src"] == 0 and s["corrupt"] == 0 for s in seen)
    assert all(s["tgt"].shape == (3, 32, 32) for s in seen)
    batch = collate(seen[:4])
    assert set(batch) >= {"tgt", "input_ids", "has_src"} and "src" not in batch
    assert batch["tgt"].shape == (4, 3, 32, 32) and not batch["has_src"].any()
    # the caption is what is tokenised
    by_key = {r["key"]: r for r in adapt_rows}
    ds = MixtureDataset(specs, cfg, tokenizer, seed=0, rows="adapt")
    assert all(np.array_equal(s["input_ids"], ds.tokenize(by_key[s["key"]]["instruction"])) for s in seen)
    # its circles are protected like a keypoint row's (meta.drawn is kept by adapt_caption)
    from trainer.data import augment_sample, decode_sample

    a = augment_sample(decode_sample(raws[row["key"]], with_mask=True), 32, np.random.default_rng(0), cfg.augment)
    assert a.src is None and a.region.box is not None and "drawn" in a.region.why
    loader = make_loader(MixtureDataset(specs, cfg, tokenizer, seed=0, rows="adapt"), 3)
    b = next(iter(loader))
    assert b["tgt"].shape == (3, 3, 32, 32) and "src" not in b
    # task training over the same output reads only its task rows, with their sources
    paired = [s for _, s in zip(range(6), MixtureDataset(specs, cfg, tokenizer, seed=0))]
    assert all(s["has_src"] == 1 and s["src"].shape == (3, 32, 32) for s in paired)
    assert {s["key"] for s in paired} == {k for k in raws if json.loads(raws[k]["json"])["task"] == "keypoint"}
    # a batch that mixes the two kinds is refused; so is an output of the other kind only
    with pytest.raises(ValueError, match="mixes adaptation rows"):
        collate([seen[0], paired[0]])
    task_only = specs_from_outputs([str(outs["a"])], {})
    with pytest.raises(ConfigError, match="no adaptation rows"):
        MixtureDataset(task_only, cfg, tokenizer, seed=0, rows="adapt")
    adapt_only = out.parent.parent / "adapt_only" / "v1"
    w = ShardWriter(adapt_only)
    w.write_shard(0, adapt_rows)
    w.write_manifest(config={}, extra={"name": "adapt_only", "version": "v1"})
    with pytest.raises(ConfigError, match="no rows other than adaptation rows"):
        MixtureDataset(specs_from_outputs([str(adapt_only)], {}), cfg, tokenizer, seed=0)
