"""The table and the projections of bench/bench_gpu.py, from its JSON document alone (so that a cut run's
file can be re-tabled: ``python bench/bench_gpu_report.py bench/results/bench_gpu.json``).

Ratios are ours / published in throughput: above 1 is faster than the published figure (for a time per
image, published seconds / our seconds)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

MIXTURE = Path(__file__).resolve().parents[1] / "configs" / "mixtures" / "instructdiffusion.yaml"


def _f(x, spec: str = ".1f", none: str = "-") -> str:
    return none if x is None else format(x, spec)


def best_row(doc: dict, name: str) -> dict | None:
    """The fastest measured variant of a model (the rate the projections use)."""
    for m in doc.get("models", []):
        if m["name"] == name:
            rows = [r for r in m["rows"] if r.get("status") == "ok"]
            return max(rows, key=lambda r: r["items_per_s"]) if rows else None
    return None


def _model(doc: dict, name: str) -> dict | None:
    return next((m for m in doc.get("models", []) if m["name"] == name), None)


def sd15_sampling(doc: dict, steps: int) -> list[dict]:
    """Per SD-1.5 UNet variant: ms per UNet pass at its batch and the 50-step per-image time with CFG
    (2 passes per step, as the published figure; 3 for InstructPix2Pix), VAE decode added."""
    m = _model(doc, "sd15_unet_ip2p")
    if not m:
        return []
    vae = _model(doc, "sd15_vae_decode")
    out = []
    for r in m["rows"]:
        if r.get("status") != "ok":
            continue
        v = next((x for x in (vae or {}).get("rows", []) if x.get("status") == "ok"
                  and x["precision"] == r["precision"] and not x["compiled"]), None)
        dec_s = v["ms_per_item"] / 1000 if v else 0.0
        pub = doc["published"]["sd15"]["s_per_image"]["compiled" if r["compiled"] else "eager"]
        two = steps * 2 * r["ms_per_item"] / 1000 + dec_s
        out.append({"precision": r["precision"], "compiled": r["compiled"], "unet_batch": r["batch"],
                    "ms_per_unet_pass": r["ms_per_batch"], "ms_per_item": r["ms_per_item"],
                    "vae_decode_ms_per_image": v["ms_per_item"] if v else None,
                    "s_per_image_cfg2": two, "published_s_per_image": pub, "ratio": pub / two,
                    "s_per_image_ip2p_cfg3": steps * 3 * r["ms_per_item"] / 1000 + dec_s})
    return out


def pbe_s_per_image(doc: dict, steps: int) -> float | None:
    r = best_row(doc, "pbe_unet")
    if r is None:
        return None
    v = best_row(doc, "sd15_vae_decode")
    return steps * 2 * r["ms_per_item"] / 1000 + (v["ms_per_item"] / 1000 if v else 0.0)


def mixture_epoch(samples: dict[str, int]) -> dict:
    """Effective samples of one epoch of the task mixture: paper counts x configs/mixtures weights."""
    import yaml

    cfg = yaml.safe_load(MIXTURE.read_text())
    counted, missing, total = {}, [], 0.0
    for d in cfg["datasets"]:
        n = samples.get(d["name"])
        if n is None:
            missing.append(d["name"])
            continue
        counted[d["name"]] = n * float(d["weight"])
        total += counted[d["name"]]
    return {"effective_samples": total, "datasets": counted, "not_counted": missing}


def projections(doc: dict, samples: dict, ieiw: dict, calls: dict, steps: int) -> dict:
    """GPU-hours from the measured rates (the fastest variant of each model)."""
    out: dict = {"rates_from": {}}
    for name in ("lama", "pbe_unet", "blip2_opt27b", "clip_vit_l14"):
        r = best_row(doc, name)
        if r:
            out["rates_from"][name] = f"{r['precision']}{' compiled' if r['compiled'] else ''}, batch {r['batch']}"
    lama = best_row(doc, "lama")
    out["ieiw_removal_gpu_h"] = ieiw["removal_pairs"] * lama["ms_per_item"] / 3.6e6 if lama else None
    pbe, blip, clip = pbe_s_per_image(doc, steps), best_row(doc, "blip2_opt27b"), best_row(doc, "clip_vit_l14")
    parts = {"pbe": pbe and ieiw["replacement_pairs"] * calls["pbe_samples"] * pbe / 3600,
             "blip2": blip and ieiw["replacement_pairs"] * calls["blip2_captions"] * blip["ms_per_item"] / 3.6e6,
             "clip": clip and ieiw["replacement_pairs"] * calls["clip_images"] * clip["ms_per_item"] / 3.6e6}
    out["ieiw_replacement_parts_gpu_h"] = parts
    out["ieiw_replacement_gpu_h"] = sum(parts.values()) if all(v is not None for v in parts.values()) else None
    known = [v for v in (out["ieiw_removal_gpu_h"], out["ieiw_replacement_gpu_h"]) if v is not None]
    out["ieiw_total_gpu_h"] = sum(known) if len(known) == 2 else None
    ep = mixture_epoch(samples)
    tr = doc.get("trainer") or {}
    rate = tr.get("samples_per_s") if tr.get("status") == "ok" else None
    out["epoch"] = {**ep, "samples_per_s": rate,
                    "gpu_h": ep["effective_samples"] / rate / 3600 if rate else None}
    return out


def table(doc: dict) -> str:
    steps = 50
    tiny = " (tiny configs on the CPU: not real figures)" if doc.get("tiny") else ""
    lines = [f"GPU benchmark, {doc.get('device')}, torch {doc.get('torch')}{tiny}",
             "ratio = ours / published throughput (> 1: faster than published)", "",
             "| model | batch | precision | compiled | items/s | ms/item | peak GiB | published | ratio | status / item |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for m in doc.get("models", []):
        pub = (m.get("published") or {}).get("items_per_s")
        if not m["rows"]:
            why = m.get("cut") or m.get("error") or m.get("note", "")
            lines.append(f"| {m['name']} | - | - | - | - | - | - | {_f(pub)} | - | {m['status']}: {why} |")
        for r in m["rows"]:
            if r.get("status") != "ok":
                lines.append(f"| {m['name']} | {r['batch']} | {r['precision']} | {'yes' if r['compiled'] else 'no'} "
                             f"| - | - | - | {_f(pub)} | - | {r.get('status')} |")
                continue
            ratio = _f(r["items_per_s"] / pub, ".2f") if pub else "-"
            lines.append(f"| {m['name']} | {r['batch']} | {r['precision']} | {'yes' if r['compiled'] else 'no'} | "
                         f"{r['items_per_s']:.2f} | {r['ms_per_item']:.2f} | {_f(r['peak_mem_gib'], '.2f')} | "
                         f"{_f(pub)} | {ratio} | {m['item']} |")
        if m["rows"] and m["status"] != "ok":
            lines.append(f"| {m['name']} | | | | | | | | | {m['status']}: {m.get('cut') or m.get('error', '')} |")
    tr = doc.get("trainer")
    if tr:
        pub = doc["published"]["train"]["items_per_s"]
        if tr.get("status") == "ok":
            lines.append(f"| trainer (SD-1.5 UNet, {tr['resolution']} px) | {tr['batch']} | {tr['precision']} | no | "
                         f"{tr['samples_per_s']:.2f} | {1000 / tr['samples_per_s']:.2f} | {_f(tr['peak_mem_gib'], '.2f')} "
                         f"| {pub} | {tr['samples_per_s'] / pub:.2f} | training sample; {tr['steps_per_s']:.2f} steps/s, "
                         f"data-wait {tr['data_wait_fraction']:.2f} |")
        else:
            lines.append(f"| trainer | - | - | - | - | - | - | {pub} | - | {tr.get('status')}: "
                         f"{tr.get('cut') or tr.get('error', '')} |")
    sd = sd15_sampling(doc, steps)
    if sd:
        px = _model(doc, "sd15_unet_ip2p").get("image_px", 512)
        lines += ["", f"SD-1.5, {steps}-step sampling at {px} px with classifier-free guidance (compared: 2 UNet passes "
                  "per step, as the published figure; InstructPix2Pix uses 3), VAE decode added, text encoder left out:",
                  "", "| precision | compiled | UNet batch | ms per UNet pass | VAE ms/image | s/image (2 passes/step) "
                  "| published s/image | ratio | s/image InstructPix2Pix (3 passes/step) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for s in sd:
            lines.append(f"| {s['precision']} | {'yes' if s['compiled'] else 'no'} | {s['unet_batch']} | "
                         f"{s['ms_per_unet_pass']:.1f} | {_f(s['vae_decode_ms_per_image'], '.1f')} | "
                         f"{s['s_per_image_cfg2']:.3f} | {s['published_s_per_image']} | {s['ratio']:.2f} | "
                         f"{s['s_per_image_ip2p_cfg3']:.3f} |")
    pr = doc.get("projections")
    if pr:
        ie, calls, parts = doc["ieiw"], doc["replacement_calls"], pr["ieiw_replacement_parts_gpu_h"]
        lines += ["", "Projected GPU-hours on this device from the measured rates (fastest variant of each model):",
                  f"- IEIW removal, {ie['removal_pairs']:,} LaMa inpaintings: " +
                  (f"{pr['ieiw_removal_gpu_h']:.2f} h" if pr["ieiw_removal_gpu_h"] is not None else
                   "not measured (LaMa not built: no TorchScript file given)"),
                  f"- IEIW replacement, {ie['replacement_pairs']:,} pairs x ({calls['pbe_samples']} PaintByExample "
                  f"{steps}-step sample with CFG + {calls['blip2_captions']} BLIP-2 captions + {calls['clip_images']} "
                  "CLIP ViT-L/14 embeddings): " + (f"{pr['ieiw_replacement_gpu_h']:.2f} h" if pr["ieiw_replacement_gpu_h"]
                                                   is not None else "incomplete") +
                  " (" + ", ".join(f"{k} {_f(v, '.2f')} h" for k, v in parts.items()) + ")",
                  "- IEIW removal + replacement: " + (f"{pr['ieiw_total_gpu_h']:.2f} h" if pr["ieiw_total_gpu_h"]
                                                      is not None else "incomplete (see above)") +
                  f" (the {ie['internal_pairs']:,} internal pairs are not generated)"]
        ep = pr["epoch"]
        lines.append(f"- one epoch of the task mixture: {ep['effective_samples']:,.0f} effective samples (paper counts x "
                     f"configs/mixtures weights; no count for {', '.join(ep['not_counted']) or 'none'}) at "
                     f"{_f(ep['samples_per_s'], '.2f')} samples/s: " +
                     (f"{ep['gpu_h']:.2f} GPU-h (the paper trained 200 epochs: {200 * ep['gpu_h']:.0f} GPU-h)"
                      if ep["gpu_h"] else "not measured"))
    if not doc.get("complete"):
        lines += ["", "(run not complete: cut or still running; the rows above are what it measured)"]
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(json.loads(Path(sys.argv[1]).read_text())))
