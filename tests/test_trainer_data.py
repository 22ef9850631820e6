"""Trainer data streams: mixing proportions, paired augmentation, corrupt samples, exact resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("webdataset")

from tests.helpers_trainer import make_output, take_batches, write_mixture
from trainer.data import AugmentConfig, DataConfig, Mixture, MixtureDataset, StreamState, make_loader, paired_augment
from trainer.datasets import load_mixture, resolve_datasets, specs_from_outputs
from trainer.model import make_tiny_tokenizer

pytestmark = pytest.mark.ml


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    outs = {
        "small": make_output(root, "small", 10, shards=2, seed=1),
        "large": make_output(root, "large", 20, shards=3, seed=2),
        "broken": make_output(root, "broken", 12, shards=2, seed=3, corrupt=4),
    }
    return root, outs


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return make_tiny_tokenizer(tmp_path_factory.mktemp("tok"))


def _draw(specs, cfg, n, **kw):
    mix = iter(Mixture(specs, cfg, seed=kw.pop("seed", 0), rank=kw.pop("rank", 0), world=1, worker=0, num_workers=1))
    counts = np.zeros(len(specs), int)
    keys = []
    for _ in range(n):
        i, raw = next(mix)
        counts[i] += 1
        keys.append(raw["__key__"])
        assert raw["__key__"].startswith(specs[i].name)  # the sample really comes from the chosen dataset
    return counts, keys


def test_mixture_draws_datasets_in_proportion_to_weights(outputs, tmp_path):
    from scipy.stats import chisquare

    root, outs = outputs
    mix = write_mixture(root / "mixture.json", {"small": (outs["small"], 3.0), "large": (outs["large"], 0.5)})
    cfg = DataConfig(mixture=str(mix), shuffle_buffer=8, shuffle_initial=4)
    specs = load_mixture(mix)
    # effective samples per epoch: small 10*3 = 30, large 20*0.5 = 10 -> 3:1
    assert [s.name for s in specs] == ["small", "large"]
    assert [round(s.probability, 6) for s in specs] == [0.75, 0.25]
    n = 2000
    counts, _ = _draw(specs, cfg, n)
    assert chisquare(counts, np.array([0.75, 0.25]) * n).pvalue > 1e-3
    assert abs(counts[0] / n - 0.75) < 0.03
    # mixing: weight -> probabilities from the weights alone (3 : 0.5)
    specs_w = load_mixture(mix, mixing="weight")
    counts_w, _ = _draw(specs_w, cfg, n, seed=5)
    assert abs(counts_w[0] / n - 3 / 3.5) < 0.03
    # another rank draws another sequence with the same proportions
    counts_r1, keys_r1 = _draw(specs, cfg, 200, rank=1)
    _, keys_r0 = _draw(specs, cfg, 200, rank=0)
    assert keys_r1 != keys_r0


def test_outputs_fallback_reads_manifests(outputs):
    root, outs = outputs
    cfg = DataConfig(mixture=str(root / "missing.json"), outputs=[str(root / "*" / "*")], output_weights={"large": 2.0})
    specs = resolve_datasets(cfg)
    assert sorted(s.name for s in specs) == ["broken", "large", "small"]
    by = {s.name: s for s in specs}
    assert by["large"].samples == 20 and len(by["large"].shards) == 3
    assert by["large"].probability == pytest.approx(40 / (10 + 40 + 12))  # samples * weight, normalised
    assert all(p.endswith(".tar") for s in specs for p in s.shards)


def test_paired_augmentation_same_crop_and_flip():
    rng0 = np.random.default_rng(0)
    src = rng0.integers(0, 255, (60, 90, 3), dtype=np.uint8)
    tgt = 255 - src
    aug = AugmentConfig(scale=[1.0, 1.5], flip_p=0.5)
    flips = 0
    for s in range(20):
        a, b = paired_augment(src, tgt, 32, np.random.default_rng(s), aug)
        assert a.shape == b.shape == (32, 32, 3)
        # target was the inverse of the source: the same geometry keeps it so (up to resampling rounding)
        assert np.abs(255 - a.astype(int) - b.astype(int)).max() <= 2
        ref, _ = paired_augment(src, tgt, 32, np.random.default_rng(s), AugmentConfig(scale=[1.0, 1.5], flip_p=0.0))
        flips += not np.array_equal(a, ref)
    assert 3 <= flips <= 17  # about half of the crops were flipped


def test_no_flip_where_a_flip_would_make_the_instruction_wrong():
    from trainer.data import flip_allowed

    aug = AugmentConfig()
    assert not flip_allowed("Remove the rightmost dog.", "edit", aug)
    assert not flip_allowed("circle the left shoulder of the man in red", "keypoint", aug)
    assert not flip_allowed("place a blue mask on the cup", "referring_seg", aug)  # task listed
    assert flip_allowed("make the sky brighter", "edit", aug)  # "brighter" is not "right"
    src = np.arange(4 * 6 * 3, dtype=np.uint8).reshape(4, 6, 3)
    for s in range(10):  # flip_p = 1 but not allowed: never flipped
        a, _ = paired_augment(src, src, 4, np.random.default_rng(s), AugmentConfig(scale=[1.0, 1.0], flip_p=1.0), False)
        assert a[0, 0, 0] < a[0, -1, 0]


def test_corrupt_samples_skipped_and_counted(outputs, tokenizer):
    root, outs = outputs
    # one shard truncated in the middle: its tail is unreadable, the run goes on
    specs = specs_from_outputs([str(outs["broken"])], {})
    tar = specs[0].shards[1]
    data = open(tar, "rb").read()
    trunc = root / "truncated.tar"
    trunc.write_bytes(data[: len(data) // 2 + 100])
    specs[0].shards.append(str(trunc))
    cfg = DataConfig(resolution=16, num_workers=0, shuffle_buffer=1, log_corrupt=0)
    ds = MixtureDataset(specs, cfg, tokenizer, seed=0)
    seen = []
    for i, s in zip(range(60), ds):
        seen.append(s)
    bad = {f"broken_{i}_v0" for i in range(4)}  # keys of the unreadable sources
    assert not any(s["key"].rsplit("_", 1)[0] in bad for s in seen)
    last = seen[-1]
    # every raw sample drawn is yielded or skipped; the skipped count also has the truncated tar's errors
    undecodable = last["pos"] - len(seen)
    assert undecodable > 0
    assert last["corrupt"] > undecodable
    assert all(s["src"].dtype == np.uint8 and s["src"].shape == (3, 16, 16) and s["src"].std() > 0 for s in seen)
    assert all(s["input_ids"].shape == (77,) for s in seen)


@pytest.mark.parametrize("workers", [0, 2])
def test_stream_resume_continues_exactly(outputs, tokenizer, workers):
    root, outs = outputs
    specs = specs_from_outputs([str(outs["small"]), str(outs["large"])], {})
    cfg = DataConfig(resolution=16, num_workers=workers, shuffle_buffer=4, shuffle_initial=2, prefetch_factor=2)

    def batches(state, n):
        return take_batches(make_loader(MixtureDataset(specs, cfg, tokenizer, seed=3, state=state), batch_size=3),
                            state, n)

    full = batches(StreamState(seed=3), 7)
    st = StreamState(seed=3)
    first = batches(st, 3)
    saved = json.loads(json.dumps(st.to_dict()))  # through JSON, as in a checkpoint
    rest = batches(StreamState.from_dict(saved).for_resume("replay", 10_000), 4)
    assert [k for k, _ in first + rest] == [k for k, _ in full]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first + rest, full))  # same crops too
    # reseed: a fresh generation, not a replay
    other = batches(StreamState.from_dict(saved).for_resume("reseed", 10_000), 4)
    assert [k for k, _ in other] != [k for k, _ in rest]
    # another number of loader workers cannot replay positions: a new generation instead
    moved = StreamState.from_dict(saved).for_resume("replay", 10_000, layout=[1, max(1, workers) + 1])
    assert moved.generation == 1 and moved.positions == {}
    assert StreamState.from_dict(saved).for_resume("replay", 10_000, layout=[1, max(1, workers)]).positions


def test_epoch_mode_splits_by_rank_and_worker(tmp_path):
    from trainer.data import _shard_urls

    # 6 shards over 2 ranks x 2 workers: each epoch, every shard read by exactly one of the 4 workers
    spec = specs_from_outputs([str(make_output(tmp_path, "six", 12, shards=6))], {})[0]
    cfg = DataConfig(resampled=False)
    firsts = []
    for g in range(4):
        it = _shard_urls(spec, cfg, seed=11, gworker=g, gtotal=4)
        n = len(spec.shards[g::4])
        firsts.append([next(it)["url"] for _ in range(n)])
    flat = [u for f in firsts for u in f]
    assert sorted(flat) == sorted(spec.shards)
    # fewer shards than workers: every worker reads the one shard and keeps its share of the samples
    one = specs_from_outputs([str(make_output(tmp_path, "one", 10, shards=1))], {})
    cfg = DataConfig(resampled=False, shuffle_buffer=0)
    seen = []
    for rank in (0, 1):
        mix = iter(Mixture(one, cfg, seed=0, rank=rank, world=2, worker=0, num_workers=1))
        seen.append([next(mix)[1]["__key__"] for _ in range(5)])
    assert not set(seen[0]) & set(seen[1])
    assert len(set(seen[0]) | set(seen[1])) == 10
