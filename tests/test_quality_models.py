"""Scorers of the quality filter: LAION heads (real key layout, strict), tiny open_clip through the
production path, GIQA KNN, the classical score."""

import json

import numpy as np
import pytest

from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.imageio import decode, encode_jpeg
from tests.helpers_quality import scene

pytestmark = pytest.mark.ml

torch = pytest.importorskip("torch")

TINY_CLIP = {"embed_dim": 768,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1}}

# The published improved-aesthetic-predictor checkpoint: these keys and shapes, nothing else.
MLP_LAYOUT = {"layers.0.weight": (1024, 768), "layers.0.bias": (1024,), "layers.2.weight": (128, 1024),
              "layers.2.bias": (128,), "layers.4.weight": (64, 128), "layers.4.bias": (64,),
              "layers.6.weight": (16, 64), "layers.6.bias": (16,), "layers.7.weight": (1, 16),
              "layers.7.bias": (1,)}


def _checkpoint(tmp_path, layout, name, seed=0):
    g = torch.Generator().manual_seed(seed)
    sd = {k: torch.randn(*shape, generator=g) * 0.05 for k, shape in layout.items()}
    path = tmp_path / name
    torch.save(sd, path)
    return path, sd


def _reference_mlp(sd, x):
    """The published forward pass written out by hand: five affine maps, no activations."""
    h = torch.as_tensor(x)
    h = h / h.norm(dim=-1, keepdim=True)
    for i in ("0", "2", "4", "6", "7"):
        h = h @ sd[f"layers.{i}.weight"].T + sd[f"layers.{i}.bias"]
    return h.squeeze(-1).numpy()


def test_mlp_loads_published_layout_strictly(tmp_path):
    from instructdiffusion_data.models.aesthetics import AestheticPredictor

    path, sd = _checkpoint(tmp_path, MLP_LAYOUT, "sac+logos+ava1-l14-linearMSE.pth")
    pred = AestheticPredictor(path, "mlp", device="cpu")
    x = np.random.default_rng(0).normal(size=(5, 768)).astype(np.float32)
    got = pred.predict(x)
    assert got.shape == (5,)
    np.testing.assert_allclose(got, _reference_mlp(sd, x), rtol=1e-4, atol=1e-5)
    # scale of the input does not matter: the head normalises, as the predictor was trained
    np.testing.assert_allclose(pred.predict(x * 7.0), got, rtol=1e-4, atol=1e-5)


def test_mlp_rejects_other_layouts(tmp_path):
    from instructdiffusion_data.models.aesthetics import AestheticPredictor

    bad = dict(MLP_LAYOUT)
    bad["layers.1.weight"] = bad.pop("layers.2.weight")  # a ReLU-shifted layout: must not load
    path, _ = _checkpoint(tmp_path, bad, "bad.pth")
    with pytest.raises(ConfigError, match="does not match the 'mlp' aesthetic head"):
        AestheticPredictor(path, "mlp", device="cpu")
    missing = {k: v for k, v in MLP_LAYOUT.items() if not k.startswith("layers.7")}
    path, _ = _checkpoint(tmp_path, missing, "missing.pth")
    with pytest.raises(ConfigError, match="layers.7"):
        AestheticPredictor(path, "mlp", device="cpu")


def test_linear_head_and_wrapped_state_dict(tmp_path):
    from instructdiffusion_data.models.aesthetics import AestheticPredictor

    g = torch.Generator().manual_seed(1)
    sd = {"weight": torch.randn(1, 768, generator=g), "bias": torch.randn(1, generator=g)}
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "linear.pth")
    pred = AestheticPredictor(tmp_path / "linear.pth", "linear", device="cpu")
    x = np.random.default_rng(1).normal(size=(3, 768)).astype(np.float32)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(pred.predict(x), xn @ sd["weight"].numpy()[0] + sd["bias"].numpy()[0], rtol=1e-4)
    with pytest.raises(ConfigError, match="does not match the 'mlp'"):
        AestheticPredictor(tmp_path / "linear.pth", "mlp", device="cpu")


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    open_clip = pytest.importorskip("open_clip")
    d = tmp_path_factory.mktemp("clip")
    cfg = d / "idd-test-tiny-clip.json"
    cfg.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(cfg)
    torch.manual_seed(0)
    model = open_clip.create_model("idd-test-tiny-clip", pretrained=None)
    ckpt = d / "tiny-clip.pt"
    torch.save(model.state_dict(), ckpt)
    return cfg, ckpt, model.eval()


def test_tiny_open_clip_through_production_path(tiny_clip):
    from PIL import Image

    from instructdiffusion_data.models.clip import ClipEmbedder

    cfg, ckpt, model = tiny_clip
    emb = ClipEmbedder("idd-test-tiny-clip", str(ckpt), "cpu", model_config=str(cfg), batch_size=2)
    assert emb.dim == 768 and emb.model_id == "idd-test-tiny-clip:tiny-clip.pt"
    imgs = [scene(i, 48, 64) for i in range(3)]
    got = emb.embed_images(imgs)
    assert got.shape == (3, 768) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    with torch.no_grad():
        x = torch.stack([emb.preprocess(Image.fromarray(i)) for i in imgs])
        ref = torch.nn.functional.normalize(model.encode_image(x), dim=-1).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)  # the checkpoint's weights, not a random init
    # bytes path: cached per image, the same vectors
    blobs = [encode_jpeg(i) for i in imgs]
    a = emb.embed_bytes(blobs + blobs[:1])
    np.testing.assert_allclose(a[0], a[3])
    np.testing.assert_allclose(a[:3], emb.embed_images([decode(b) for b in blobs]), atol=1e-6)


def test_meta_embedding_is_tied_to_image_bytes(tiny_clip):
    from instructdiffusion_data.models.clip import ClipEmbedder, get_meta_embedding

    cfg, ckpt, _ = tiny_clip
    emb = ClipEmbedder("idd-test-tiny-clip", str(ckpt), "cpu", model_config=str(cfg))
    rows = [{"src": encode_jpeg(scene(i, 40, 40)), "meta": {}} for i in range(2)]
    vecs = emb.embed_rows(rows, "src", store=True)
    stored = get_meta_embedding(json.loads(json.dumps(rows[0]["meta"])), emb.model_id, "src", rows[0]["src"])
    np.testing.assert_allclose(stored, vecs[0], atol=2e-3)  # float16 in meta
    assert get_meta_embedding(rows[0]["meta"], emb.model_id, "src", rows[1]["src"]) is None  # other image


def test_missing_checkpoint_is_one_line_error(tiny_clip):
    from instructdiffusion_data.models.clip import ClipEmbedder

    cfg, _, _ = tiny_clip
    with pytest.raises(ConfigError, match="checkpoint file not found"):
        ClipEmbedder("idd-test-tiny-clip", "/nowhere/w.pt", "cpu", model_config=str(cfg))


def test_giqa_ranks_reference_like_above_noise(tmp_path):
    from instructdiffusion_data.models import giqa

    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for i in range(30):
        (ref_dir / f"{i:03d}.jpg").write_bytes(encode_jpeg(scene(i)))
    (ref_dir / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")
    ext = giqa.classical_extractor()
    ref = giqa.build_reference(ref_dir, ext)
    assert ref.count == 30 and ref.info["skipped_count"] == 1
    rng = np.random.default_rng(7)
    like = [scene(100 + i) for i in range(5)]  # same kind of image, not in the reference
    noise = [rng.integers(0, 256, like[0].shape, dtype=np.uint8) for _ in range(5)]
    s_like = ref.score(ext(like), k=5)
    s_noise = ref.score(ext(noise), k=5)
    assert s_like.min() > s_noise.max()
    # saved and loaded back: the same scores
    ref.save(tmp_path / "idx")
    back = giqa.GiqaReference.load(tmp_path / "idx")
    np.testing.assert_allclose(back.score(ext(like), k=5), s_like, rtol=1e-6)
    assert back.feature_id == "classical/1" and back.info["percentiles"]["p50"] > 0
    # an image of the reference itself is not scored against itself
    own = ext([decode((ref_dir / "000.jpg").read_bytes())])
    assert np.isfinite(ref.score(own, k=3)).all()


def test_giqa_score_is_mean_inverse_distance():
    from instructdiffusion_data.models.giqa import GiqaReference

    ref = GiqaReference(np.array([[1.0, 0], [3.0, 0], [7.0, 0]], np.float32), "toy", "l2")
    q = np.array([[0.0, 0]], np.float32)
    assert ref.score(q, k=2)[0] == pytest.approx((1 / 1 + 1 / 3) / 2)
    cos = GiqaReference(np.array([[1.0, 0], [0, 1.0]], np.float32), "toy", "cosine")
    assert cos.score(np.array([[1.0, 1.0]], np.float32), k=2)[0] == pytest.approx(1 / (1 - 2 ** -0.5), rel=1e-5)


def test_giqa_pair_skips_its_own_reference_image():
    from instructdiffusion_data.models.giqa import GiqaReference

    ref = GiqaReference(np.array([[0.0, 0], [5.0, 0], [6.0, 0]], np.float32), "toy", "l2")
    src = np.array([[0.01, 0]], np.float32)  # the unedited photo, re-encoded: next to reference image 0
    tgt = np.array([[0.5, 0]], np.float32)  # the edit
    _, t0 = ref.score_pairs(src, tgt, k=1)
    assert t0[0] == pytest.approx(1 / 0.5)  # rewarded for resembling its own source
    s1, t1 = ref.score_pairs(src, tgt, k=1, own_radius=0.05)
    assert t1[0] == pytest.approx(1 / 4.5) and s1[0] == pytest.approx(1 / 4.99, rel=1e-5)


def test_giqa_gmm_form(tmp_path):
    from instructdiffusion_data.models import giqa

    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for i in range(30):
        (ref_dir / f"{i:03d}.jpg").write_bytes(encode_jpeg(scene(i)))
    ext = giqa.classical_extractor()
    gmm = giqa.build_reference(ref_dir, ext, form="gmm", components=4)
    like = ext([scene(100 + i) for i in range(5)])
    rng = np.random.default_rng(3)
    noise = ext([rng.integers(0, 256, (160, 200, 3), dtype=np.uint8) for _ in range(5)])
    assert gmm.score(like).min() > gmm.score(noise).max()
    gmm.save(tmp_path / "g")
    back = giqa.load_reference(tmp_path / "g")
    assert isinstance(back, giqa.GiqaGMM) and back.info["components"] == 4
    np.testing.assert_allclose(back.score(like), gmm.score(like), rtol=1e-6)
    assert gmm.info["percentiles"]["p5"] < gmm.info["percentiles"]["p95"]


def test_giqa_ivf_index_probing_every_list_is_exact(tmp_path):
    from instructdiffusion_data.models.giqa import GiqaReference, load_reference

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, 16)).astype(np.float32)
    q = x[:50] + 0.01
    flat = GiqaReference(x, "toy", "l2")
    ivf = GiqaReference(x, "toy", "l2", factory="IVF16,Flat", nprobe=16)
    np.testing.assert_allclose(ivf.score(q, 5), flat.score(q, 5), rtol=1e-5)
    ivf.save(tmp_path / "ivf")
    back = load_reference(tmp_path / "ivf")
    assert back.info["index"] == "IVF16,Flat"
    np.testing.assert_allclose(back.score(q, 5), flat.score(q, 5), rtol=1e-5)
    with pytest.raises(ConfigError, match="factory"):
        GiqaReference(x, "toy", "l2", factory="NotAnIndex")
