"""Inpainting adapter: lama through the production TorchScript path, opencv on real pixels."""

import numpy as np
import pytest

from instructdiffusion_data.errors import ConfigError
from instructdiffusion_data.models.inpaint import LAMA_ENV, LamaInpainter, OpenCVInpainter, make_inpainter

from .helpers_ieiw_removal import FillGrey, TinyConvNet, save_script


def _scene(h, w, seed=0):
    """A smooth gradient with a red square in the middle, and the square's mask."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([60 + 100 * xx / w, 80 + 80 * yy / h, 120 + 0 * xx], -1)
    img += np.random.default_rng(seed).normal(0, 1.0, img.shape)
    img = np.clip(img, 0, 255).astype(np.uint8)
    clean = img.copy()
    mask = np.zeros((h, w), np.uint8)
    y0, x0 = h // 3, w // 3
    mask[y0:y0 + h // 4, x0:x0 + w // 4] = 255
    img[mask > 0] = (220, 20, 20)
    return img, mask, clean


@pytest.fixture()
def grey_model(tmp_path):
    return save_script(FillGrey(), tmp_path / "big-lama.pt")


def test_lama_crops_padded_output_and_fills_mask(grey_model):
    # sizes not multiples of 8, two shapes in one call, batch of 2 per forward
    imgs, masks = [], []
    for h, w in ((37, 50), (37, 50), (64, 29), (37, 50)):
        img, m, _ = _scene(h, w)
        imgs.append(img)
        masks.append(m)
    lama = LamaInpainter(str(grey_model), device="cpu", batch_size=2)
    out = lama.inpaint(imgs, masks)
    for img, m, o in zip(imgs, masks, out):
        assert o.shape == img.shape and o.dtype == np.uint8
        assert (o[m > 0] == 127).all()  # clip(0.5 * 255).astype(uint8), as simple-lama converts
        # outside: float round trip x/255*255 truncated, within one level of the input
        assert np.abs(o[m == 0].astype(int) - img[m == 0]).max() <= 1
    assert lama.model_id.startswith("lama:big-lama.pt:sha256-")


def test_lama_matches_simple_lama_reference(tmp_path, monkeypatch):
    """The adapter's batched path gives what simple-lama's own single-image call gives."""
    path = save_script(TinyConvNet(), tmp_path / "tiny.pt")
    monkeypatch.setenv(LAMA_ENV, str(path))
    from simple_lama_inpainting import SimpleLama

    ref = SimpleLama(device=__import__("torch").device("cpu"))
    imgs = [_scene(45, 61, s)[0] for s in range(3)]
    masks = [_scene(45, 61, s)[1] for s in range(3)]
    ours = make_inpainter("lama", lama_model=None, device="cpu", batch_size=3).inpaint(imgs, masks)  # via $LAMA_MODEL
    for img, m, o in zip(imgs, masks, ours):
        expected = np.asarray(ref(img, m))[:45, :61]  # simple-lama returns the padded size
        assert np.abs(o.astype(int) - expected.astype(int)).max() <= 1


def test_lama_missing_weights_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv(LAMA_ENV, raising=False)
    with pytest.raises(ConfigError, match="LAMA_MODEL"):
        make_inpainter("lama")
    with pytest.raises(ConfigError, match="not found"):
        make_inpainter("lama", lama_model=str(tmp_path / "nope.pt"))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="not a TorchScript"):
        make_inpainter("lama", lama_model=str(bad))


@pytest.mark.parametrize("method", ["telea", "ns"])
def test_opencv_removes_object_on_real_pixels(method):
    img, mask, clean = _scene(96, 128)
    out = OpenCVInpainter(method, 5).inpaint([img], [mask])[0]
    inside = mask > 0
    assert (out[~inside] == img[~inside]).all()
    # the red square is gone: the fill is close to the gradient that was under it, far from red
    assert np.abs(out[inside].astype(int) - clean[inside]).mean() < 12
    assert np.abs(out[inside].astype(int) - img[inside]).mean() > 60


def test_opencv_config_errors():
    with pytest.raises(ConfigError):
        OpenCVInpainter("fast")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        make_inpainter("sd")
