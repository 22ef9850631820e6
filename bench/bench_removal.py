"""Benchmark of the IEIW removal pipeline (PhraseCut regions -> inpainting -> remove/add pairs).

Default mode (CPU, opencv backend): generates demo PhraseCut data, runs the shipped pipeline config
in this process (``runner.run(..., use_ray=False)``, one core) and reports output samples/s beside
the JPEG codec limit measured in the same run on the same images: per output sample, decode its
source and encode its target with the same library the pipeline uses (simplejpeg, quality 95, 4:4:4).

    .venv/bin/python bench/bench_removal.py --n 96

``--lama-gpu`` mode: builds a randomly initialised FFC-ResNet generator with big-lama's real
architecture and size (~51M parameters: 4->64 7x7 stem, three stride-2 downsamplings to 512 channels,
18 fast-Fourier-convolution residual blocks with 75% global channels, three transposed-conv
upsamplings, 7x7 head, sigmoid; wrapped like big-lama.pt: ``model(img, mask)`` composites the
prediction into the masked image), traces it to TorchScript, saves it and loads it through the
production adapter (``models.inpaint.LamaInpainter``, the same path as big-lama.pt). It reports
images/s at batch 1, 8 and 32 for the bare forward and for the adapter (numpy in, numpy out).
Throughput does not depend on the weights.

    python bench/bench_removal.py --lama-gpu --size 512 --batches 1 8 32 [--half]

Self-contained: needs only the package and torch (no test helpers).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# -- CPU pipeline benchmark ---------------------------------------------------------------------

def bench_pipeline(n: int, seed: int, backend_method: str) -> None:
    from instructdiffusion_data import runner
    from instructdiffusion_data.config import load_pipeline_config
    from instructdiffusion_data.demo import phrasecut as demo
    from instructdiffusion_data.imageio import decode, encode_jpeg
    from instructdiffusion_data.schema import table_to_rows  # noqa: F401 - import cost outside the timing

    repo = Path(__file__).resolve().parent.parent
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        info = demo.generate(tmp, n, seed)
        t_demo = time.perf_counter() - t0
        cfg = load_pipeline_config(repo / "configs" / "pipelines" / "ieiw_removal.yaml",
                                   [f"source.root={tmp / 'phrasecut'}", f"stages.0.opencv_method={backend_method}"])
        t0, c0 = time.perf_counter(), time.process_time()
        summary = runner.run(cfg, out=str(tmp / "out"), use_ray=False)
        t_run, c_run = time.perf_counter() - t0, time.process_time() - c0

        # the removal stage alone, on the same records (no writer, no later stages)
        from instructdiffusion_data.runner import build
        from instructdiffusion_data.shard_tasks import run_stages_local

        source, stages = build(cfg)
        records = list(source.iter_records())
        removal = [st for st in stages if st.name == "inpaint_remove"]
        t0, c0 = time.perf_counter(), time.process_time()
        stage_rows = run_stages_local(removal, records)
        t_stage, c_stage = time.perf_counter() - t0, time.process_time() - c0
        stage_kept = sum(1 for r in stage_rows if r["keep"])
        train = summary.manifest["splits"]["train"]["rows"]
        rejected = summary.manifest["splits"]["rejected"]["rows"]

        # codec limit on the same images: decode each output sample's source, encode its target
        import tarfile

        pairs = []
        for tar_path in sorted((summary.root / "train").glob("*.tar")):
            with tarfile.open(tar_path) as tf:
                data = {m.name: tf.extractfile(m).read() for m in tf.getmembers()}
            for name in sorted(data):
                if name.endswith(".src.jpg"):
                    pairs.append((data[name], data[name[:-8] + ".tgt.jpg"]))
        tgts = [decode(t) for _, t in pairs]
        t0, c0 = time.perf_counter(), time.process_time()
        for (s, _), tgt in zip(pairs, tgts):
            decode(s)
            encode_jpeg(tgt, 95)
        t_codec, c_codec = time.perf_counter() - t0, time.process_time() - c0

    shape = tgts[0].shape if tgts else (0, 0)
    sps = train / t_run
    codec = len(pairs) / t_codec if t_codec else float("inf")
    print(f"demo data: {n} images, {info['tasks']} tasks, generated in {t_demo:.2f}s")
    stages_txt = " -> ".join(s["type"] for s in cfg.stages)
    print(f"pipeline [{stages_txt}] (opencv {backend_method}, 1 process, no Ray): {train} train + {rejected} "
          f"rejected rows in {t_run:.2f}s wall / {c_run:.2f}s CPU = {sps:.1f} samples/s wall, "
          f"{train / c_run:.1f} samples/s per CPU-second")
    print(f"inpaint_remove stage alone: {stage_kept} samples in {t_stage:.2f}s wall / {c_stage:.2f}s CPU = "
          f"{stage_kept / t_stage:.1f} samples/s wall, {stage_kept / c_stage:.1f} per CPU-second")
    print(f"JPEG codec limit (simplejpeg decode src + encode tgt, ~{shape[1]}x{shape[0]}): {codec:.0f} samples/s wall, "
          f"{len(pairs) / c_codec:.0f} per CPU-second")
    print(f"ratio pipeline / codec limit: {sps / codec:.3f} (wall), {(train / c_run) / (len(pairs) / c_codec):.3f} (CPU time)")


# -- big-lama-sized network --------------------------------------------------------------------

def build_big_lama(ngf: int = 64, n_down: int = 3, n_blocks: int = 18, ratio: float = 0.75):
    """A randomly initialised FFC-ResNet generator of big-lama's architecture, as an inpainting
    module with big-lama.pt's call contract."""
    import torch
    from torch import nn

    def cbr(cin, cout, k, stride=1, pad=0):
        return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, bias=False, padding_mode="reflect" if pad else "zeros"),
                             nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

    class FourierUnit(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv = nn.Conv2d(2 * c, 2 * c, 1, bias=False)
            self.bn = nn.BatchNorm2d(2 * c)

        def forward(self, x):
            h, w = x.shape[-2:]
            f = torch.fft.rfftn(x, dim=(-2, -1), norm="ortho")
            f = torch.cat([f.real, f.imag], dim=1)  # [b, 2c, h, w//2+1]
            f = torch.relu(self.bn(self.conv(f)))
            re, im = torch.chunk(f, 2, dim=1)
            return torch.fft.irfftn(torch.complex(re, im), s=(h, w), dim=(-2, -1), norm="ortho")

    class SpectralTransform(nn.Module):
        def __init__(self, cin, cout):
            super().__init__()
            self.conv1 = cbr(cin, cout // 2, 1)
            self.fu = FourierUnit(cout // 2)
            self.conv2 = nn.Conv2d(cout // 2, cout, 1, bias=False)

        def forward(self, x):
            x = self.conv1(x)
            return self.conv2(x + self.fu(x))

    class FFCBlockConv(nn.Module):
        """FFC with local/global split (ratio of global channels), BN and ReLU on both branches."""

        def __init__(self, c):
            super().__init__()
            cg = int(c * ratio)
            cl = c - cg
            self.l2l = nn.Conv2d(cl, cl, 3, 1, 1, bias=False, padding_mode="reflect")
            self.l2g = nn.Conv2d(cl, cg, 3, 1, 1, bias=False, padding_mode="reflect")
            self.g2l = nn.Conv2d(cg, cl, 3, 1, 1, bias=False, padding_mode="reflect")
            self.g2g = SpectralTransform(cg, cg)
            self.bn_l, self.bn_g = nn.BatchNorm2d(cl), nn.BatchNorm2d(cg)

        def forward(self, xl, xg):
            yl = torch.relu(self.bn_l(self.l2l(xl) + self.g2l(xg)))
            yg = torch.relu(self.bn_g(self.l2g(xl) + self.g2g(xg)))
            return yl, yg

    class ResBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.a, self.b = FFCBlockConv(c), FFCBlockConv(c)

        def forward(self, xl, xg):
            yl, yg = self.a(xl, xg)
            yl, yg = self.b(yl, yg)
            return xl + yl, xg + yg

    class Generator(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.ReflectionPad2d(3), cbr(4, ngf, 7))
            downs = []
            for i in range(n_down - 1):
                downs.append(cbr(ngf * 2 ** i, ngf * 2 ** (i + 1), 3, 2, 1))
            self.down = nn.Sequential(*downs)
            cin, cout = ngf * 2 ** (n_down - 1), ngf * 2 ** n_down
            cg = int(cout * ratio)
            self.last_l = cbr(cin, cout - cg, 3, 2, 1)  # last downsampling splits into local/global
            self.last_g = cbr(cin, cg, 3, 2, 1)
            self.blocks = nn.ModuleList([ResBlock(cout) for _ in range(n_blocks)])
            ups = []
            for i in range(n_down):
                m = 2 ** (n_down - i)
                ups += [nn.ConvTranspose2d(ngf * m, ngf * m // 2, 3, 2, 1, output_padding=1),
                        nn.BatchNorm2d(ngf * m // 2), nn.ReLU(inplace=True)]
            self.up = nn.Sequential(*ups)
            self.head = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(ngf, 3, 7), nn.Sigmoid())

        def forward(self, x):
            x = self.down(self.stem(x))
            xl, xg = self.last_l(x), self.last_g(x)
            for blk in self.blocks:
                xl, xg = blk(xl, xg)
            return self.head(self.up(torch.cat([xl, xg], dim=1)))

    class Wrapper(nn.Module):
        """big-lama.pt's contract: masked image + mask in, prediction composited into the image out."""

        def __init__(self):
            super().__init__()
            self.generator = Generator()

        def forward(self, img, mask):
            m = mask.to(img.dtype)
            masked = img * (1 - m)
            pred = self.generator(torch.cat([masked, m], dim=1))
            return m * pred + (1 - m) * img

    return Wrapper().eval()


def bench_lama(size: int, batches: list[int], device: str, half: bool, iters: int) -> None:
    import torch

    from instructdiffusion_data.models.inpaint import LamaInpainter

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    net = build_big_lama()
    n_params = sum(p.numel() for p in net.parameters())
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu"
    print(f"big-lama-sized FFC-ResNet: {n_params / 1e6:.1f}M parameters (random init), device {name}, "
          f"{size}x{size}, {'fp16' if half else 'fp32'}")
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as tmp:
        ex_img = torch.rand(1, 3, size, size)
        ex_mask = (torch.rand(1, 1, size, size) > 0.7).float()
        with torch.no_grad():
            traced = torch.jit.trace(net, (ex_img, ex_mask), check_trace=False)
        path = Path(tmp) / "big-lama-random.pt"
        traced.save(str(path))
        lama = LamaInpainter(str(path), device=device, batch_size=max(batches), half=half)
        for b in batches:
            lama.batch_size = b
            imgs = [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(b)]
            masks = [np.zeros((size, size), np.uint8) for _ in range(b)]
            for m in masks:
                y, x = rng.integers(0, size // 2, 2)
                m[y:y + size // 3, x:x + size // 3] = 255
            x = torch.from_numpy(np.stack([LamaInpainter.prepare(i, m)[0] for i, m in zip(imgs, masks)])).to(lama.device)
            mk = torch.from_numpy(np.stack([LamaInpainter.prepare(i, m)[1] for i, m in zip(imgs, masks)])).to(lama.device)
            if lama.half:
                x, mk = x.half(), mk.half()

            def sync():
                if lama.device.type == "cuda":
                    torch.cuda.synchronize()

            try:
                with torch.inference_mode():
                    for _ in range(2):
                        lama.model(x, mk)
                    sync()
                    t0 = time.perf_counter()
                    for _ in range(iters):
                        lama.model(x, mk)
                    sync()
                    t_fwd = time.perf_counter() - t0
                lama.inpaint(imgs, masks)
                sync()
                t0 = time.perf_counter()
                for _ in range(iters):
                    lama.inpaint(imgs, masks)
                sync()
                t_ad = time.perf_counter() - t0
            except torch.OutOfMemoryError:
                print(f"batch {b:3d}: out of memory")
                continue
            mem = torch.cuda.max_memory_allocated() / 2**30 if lama.device.type == "cuda" else 0.0
            print(f"batch {b:3d}: forward {b * iters / t_fwd:8.1f} images/s   adapter (numpy in/out) "
                  f"{b * iters / t_ad:8.1f} images/s   peak GPU memory {mem:.1f} GiB")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=96, help="demo images for the CPU pipeline benchmark")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--method", choices=["telea", "ns"], default="telea")
    ap.add_argument("--lama-gpu", action="store_true", help="benchmark a big-lama-sized network instead")
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--half", action="store_true")
    ap.add_argument("--iters", type=int, default=5)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.lama_gpu:
        bench_lama(args.size, args.batches, args.device, args.half, args.iters)
    else:
        bench_pipeline(args.n, args.seed, args.method)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
