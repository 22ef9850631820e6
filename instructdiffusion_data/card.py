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

The rest of the card: task categories, licence per source dataset (:data:`SOURCES`), citations (the
source datasets and InstructDiffusion, Geng et al. 2023) and how to read the outputs with webdataset,
DuckDB and Ray. The card is written atomically (temporary name, then rename) and only over a README.md
that ``idd card`` wrote itself (``--force`` otherwise).

:data:`DATASET_LICENCES` maps a row's ``dataset`` to a licence id (an SPDX expression; ``LicenseRef-*``
where no SPDX id exists); :func:`provenance_for` builds the ``meta["provenance"]`` the writer turns into
the sidecar's ``source_id`` and ``licence`` columns.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CARD_FILE = "README.md"
CARD_MARKER = "<!-- written by `idd card`: rerun it to update; edits here are overwritten -->"
IMAGE_ROLES = ("src", "tgt", "mask")


# --------------------------------------------------------------------------------------------------
# Source datasets: licence and citation. ``checked``: what the licence statement was checked against
# while writing this table ("" = not confirmed: the card says "see source" and links the source).


@dataclass(frozen=True)
class SourceInfo:
    name: str                 # display name
    licence: str              # licence id: SPDX expression, LicenseRef-* where SPDX has none
    hub: tuple[str, ...]      # Hugging Face hub licence ids (YAML ``license:``)
    terms: str                # what applies, in words (annotations / images)
    url: str                  # where the terms are stated
    checked: str              # source of the statement, "" when not confirmed
    bibtex: str


_FLICKR = "LicenseRef-Flickr-per-image"
_SEE = "LicenseRef-see-source"

_COCO_BIB = """@inproceedings{lin2014coco,
  title={Microsoft {COCO}: Common Objects in Context},
  author={Lin, Tsung-Yi and Maire, Michael and Belongie, Serge and Hays, James and Perona, Pietro and Ramanan, Deva and Doll{\\'a}r, Piotr and Zitnick, C. Lawrence},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2014}
}"""

_REFCOCO_BIB = """@inproceedings{kazemzadeh2014referitgame,
  title={{ReferItGame}: Referring to Objects in Photographs of Natural Scenes},
  author={Kazemzadeh, Sahar and Ordonez, Vicente and Matten, Mark and Berg, Tamara},
  booktitle={Conference on Empirical Methods in Natural Language Processing (EMNLP)},
  year={2014}
}
@inproceedings{yu2016modeling,
  title={Modeling Context in Referring Expressions},
  author={Yu, Licheng and Poirson, Patrick and Yang, Shan and Berg, Alexander C. and Berg, Tamara L.},
  booktitle={European Conference on Computer Vision (ECCV)},
  year={2016}
}"""

_COCO_TERMS = ("annotations CC BY 4.0 (COCO Consortium); images from Flickr, each under the licence listed for it in "
               "the annotation file's `licenses` (COCO terms of use)")

SOURCES: dict[str, SourceInfo] = {
    "coco": SourceInfo(
        "COCO (person keypoints)", f"CC-BY-4.0 AND {_FLICKR}", ("cc-by-4.0", "other"), _COCO_TERMS,
        "https://cocodataset.org/#termsofuse", "cocodataset.org terms of use", _COCO_BIB),
    "cocostuff": SourceInfo(
        "COCO-Stuff", f"CC-BY-4.0 AND {_FLICKR}", ("cc-by-4.0", "other"),
        "COCO-Stuff annotations CC BY 4.0 (Caesar et al.); COCO annotations CC BY 4.0; images: COCO (Flickr, per image)",
        "https://github.com/nightrome/cocostuff", "nightrome/cocostuff README",
        """@inproceedings{caesar2018cocostuff,
  title={{COCO-Stuff}: Thing and Stuff Classes in Context},
  author={Caesar, Holger and Uijlings, Jasper and Ferrari, Vittorio},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2018}
}
""" + _COCO_BIB),
    "refcoco": SourceInfo(
        "RefCOCO", f"{_SEE} AND {_FLICKR}", ("other",),
        "referring expressions: see the REFER release (no licence statement confirmed here); images: COCO (Flickr, per image)",
        "https://github.com/lichengunc/refer", "", _REFCOCO_BIB + "\n" + _COCO_BIB),
    "refcoco+": SourceInfo(
        "RefCOCO+", f"{_SEE} AND {_FLICKR}", ("other",),
        "referring expressions: see the REFER release (no licence statement confirmed here); images: COCO (Flickr, per image)",
        "https://github.com/lichengunc/refer", "", _REFCOCO_BIB + "\n" + _COCO_BIB),
    "refcocog": SourceInfo(
        "RefCOCOg", f"{_SEE} AND {_FLICKR}", ("other",),
        "referring expressions: see the REFER release (no licence statement confirmed here); images: COCO (Flickr, per image)",
        "https://github.com/lichengunc/refer", "", """@inproceedings{mao2016generation,
  title={Generation and Comprehension of Unambiguous Object Descriptions},
  author={Mao, Junhua and Huang, Jonathan and Toshev, Alexander and Camburu, Oana and Yuille, Alan L. and Murphy, Kevin},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2016}
}
""" + _COCO_BIB),
    "grefcoco": SourceInfo(
        "gRefCOCO", f"{_SEE} AND {_FLICKR}", ("other",),
        "expressions: see the GRES release (no licence statement confirmed here); images: COCO (Flickr, per image)",
        "https://github.com/henghuiding/gRefCOCO", "", """@inproceedings{liu2023gres,
  title={{GRES}: Generalized Referring Expression Segmentation},
  author={Liu, Chang and Ding, Henghui and Jiang, Xudong},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2023}
}
""" + _COCO_BIB),
    "phrasecut": SourceInfo(
        "VGPhraseCut", _SEE, ("other",),
        "phrase-region annotations: see the PhraseCut release (no licence statement confirmed here); built on Visual "
        "Genome (annotations CC BY 4.0; images with their own terms)",
        "https://github.com/ChenyunWu/PhraseCutDataset", "", """@inproceedings{wu2020phrasecut,
  title={{PhraseCut}: Language-Based Image Segmentation in the Wild},
  author={Wu, Chenyun and Lin, Zhe and Cohen, Scott and Bui, Trung and Maji, Subhransu},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2020}
}
@article{krishna2017visualgenome,
  title={Visual Genome: Connecting Language and Vision Using Crowdsourced Dense Image Annotations},
  author={Krishna, Ranjay and Zhu, Yuke and Groth, Oliver and Johnson, Justin and Hata, Kenji and Kravitz, Joshua and Chen, Stephanie and Kalantidis, Yannis and Li, Li-Jia and Shamma, David A. and Bernstein, Michael S. and Fei-Fei, Li},
  journal={International Journal of Computer Vision},
  year={2017}
}"""),
    "sa1b": SourceInfo(
        "SA-1B", "LicenseRef-SA-1B-Dataset-Research-License", ("other",),
        "SA-1B Dataset Research License (research use only; terms accepted at download)",
        "https://ai.meta.com/datasets/segment-anything/", "Meta's SA-1B release (research-only terms)",
        """@inproceedings{kirillov2023segment,
  title={Segment Anything},
  author={Kirillov, Alexander and Mintun, Eric and Ravi, Nikhila and Mao, Hanzi and Rolland, Chloe and Gustafson, Laura and Xiao, Tete and Whitehead, Spencer and Berg, Alexander C. and Lo, Wan-Yen and Doll{\\'a}r, Piotr and Girshick, Ross},
  booktitle={IEEE/CVF International Conference on Computer Vision (ICCV)},
  year={2023}
}"""),
    "openimages": SourceInfo(
        "Open Images", "CC-BY-4.0 AND CC-BY-2.0", ("cc-by-4.0", "cc-by-2.0"),
        "annotations CC BY 4.0 (Google); images listed as CC BY 2.0 (not verified per image by the publisher)",
        "https://storage.googleapis.com/openimages/web/factsfigures.html", "Open Images release notes",
        """@article{kuznetsova2020openimages,
  title={The Open Images Dataset V4},
  author={Kuznetsova, Alina and Rom, Hassan and Alldrin, Neil and Uijlings, Jasper and Krasin, Ivan and Pont-Tuset, Jordi and Kamali, Shahab and Popov, Stefan and Malloci, Matteo and Kolesnikov, Alexander and Duerig, Tom and Ferrari, Vittorio},
  journal={International Journal of Computer Vision},
  year={2020}
}"""),
    "magicbrush": SourceInfo(
        "MagicBrush", "CC-BY-4.0", ("cc-by-4.0",), "CC BY 4.0 (source images from COCO)",
        "https://huggingface.co/datasets/osunlp/MagicBrush", "the osunlp/MagicBrush dataset card",
        """@inproceedings{zhang2023magicbrush,
  title={{MagicBrush}: A Manually Annotated Dataset for Instruction-Guided Image Editing},
  author={Zhang, Kai and Mo, Lingbo and Chen, Wenhu and Sun, Huan and Su, Yu},
  booktitle={Advances in Neural Information Processing Systems (NeurIPS), Datasets and Benchmarks},
  year={2023}
}"""),
    "instructpix2pix": SourceInfo(
        "InstructPix2Pix", "LicenseRef-not-stated", ("unknown",),
        "no licence stated for the released data (Stable Diffusion images of GPT-3-edited LAION captions); see source",
        "https://github.com/timothybrooks/instruct-pix2pix", "", """@inproceedings{brooks2023instructpix2pix,
  title={{InstructPix2Pix}: Learning to Follow Image Editing Instructions},
  author={Brooks, Tim and Holynski, Aleksander and Efros, Alexei A.},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2023}
}"""),
    "gier": SourceInfo(
        "GIER", _SEE, ("other",), "see source (no licence statement confirmed here)",
        "https://sites.google.com/view/gierdataset", "", """@inproceedings{shi2020benchmark,
  title={A Benchmark and Baseline for Language-Driven Image Editing},
  author={Shi, Jing and Xu, Ning and Bui, Trung and Dernoncourt, Franck and Wen, Zheng and Xu, Chenliang},
  booktitle={Asian Conference on Computer Vision (ACCV)},
  year={2020}
}"""),
    "gqa_inpaint": SourceInfo(
        "GQA-Inpaint", _SEE, ("other",),
        "see source (no licence statement confirmed here); images from GQA / Visual Genome",
        "https://github.com/abyildirim/inst-inpaint", "", """@article{yildirim2023instinpaint,
  title={Inst-Inpaint: Instructing to Remove Objects with Diffusion Models},
  author={Yildirim, Ahmet Burak and Baday, Vedat and Erdem, Erkut and Erdem, Aykut and Dundar, Aysegul},
  journal={arXiv preprint arXiv:2304.03246},
  year={2023}
}"""),
    "gopro": SourceInfo(
        "GoPro (GOPRO_Large)", _SEE, ("other",),
        "see source: the authors' dataset page states the terms (not confirmed here)",
        "https://seungjunnah.github.io/Datasets/gopro", "", """@inproceedings{nah2017deep,
  title={Deep Multi-Scale Convolutional Neural Network for Dynamic Scene Deblurring},
  author={Nah, Seungjun and Kim, Tae Hyun and Lee, Kyoung Mu},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2017}
}"""),
    "reds": SourceInfo(
        "REDS", _SEE, ("other",),
        "see source: the authors' dataset page states the terms (not confirmed here)",
        "https://seungjunnah.github.io/Datasets/reds", "", """@inproceedings{nah2019ntire,
  title={{NTIRE} 2019 Challenge on Video Deblurring and Super-Resolution: Dataset and Study},
  author={Nah, Seungjun and Baik, Sungyong and Hong, Seokil and Moon, Gyeongsik and Son, Sanghyun and Timofte, Radu and Lee, Kyoung Mu},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition Workshops (CVPRW)},
  year={2019}
}"""),
    "sidd": SourceInfo(
        "SIDD", _SEE, ("other",), "see source (no licence statement confirmed here)",
        "https://abdokamel.github.io/sidd/", "", """@inproceedings{abdelhamed2018sidd,
  title={A High-Quality Denoising Dataset for Smartphone Cameras},
  author={Abdelhamed, Abdelrahman and Lin, Stephen and Brown, Michael S.},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2018}
}"""),
    "clwd": SourceInfo(
        "CLWD", _SEE, ("other",), "see source (no licence statement confirmed here)",
        "https://github.com/MRUIL/WDNet", "", """@inproceedings{liu2021wdnet,
  title={{WDNet}: Watermark-Decomposition Network for Visible Watermark Removal},
  author={Liu, Yang and Zhu, Zhen and Bai, Xiang},
  booktitle={IEEE/CVF Winter Conference on Applications of Computer Vision (WACV)},
  year={2021}
}"""),
    "mpii": SourceInfo(
        "MPII Human Pose", "LicenseRef-MPII-research-only", ("other",),
        "annotations free for research; commercial use not allowed (images are YouTube frames the authors hold no "
        "copyright for)", "http://human-pose.mpi-inf.mpg.de/", "the MPII Human Pose page",
        """@inproceedings{andriluka20142d,
  title={{2D} Human Pose Estimation: New Benchmark and State of the Art Analysis},
  author={Andriluka, Mykhaylo and Pishchulin, Leonid and Gehler, Peter and Schiele, Bernt},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2014}
}"""),
    "crowdpose": SourceInfo(
        "CrowdPose", _SEE, ("other",),
        "see source (no licence statement confirmed here); images drawn from COCO, MPII and AI Challenger",
        "https://github.com/Jeff-sjtu/CrowdPose", "", """@inproceedings{li2019crowdpose,
  title={{CrowdPose}: Efficient Crowded Scenes Pose Estimation and A New Benchmark},
  author={Li, Jiefeng and Wang, Can and Zhu, Hao and Mao, Yihuan and Fang, Hao-Shu and Lu, Cewu},
  booktitle={IEEE Conference on Computer Vision and Pattern Recognition (CVPR)},
  year={2019}
}"""),
    "aic": SourceInfo(
        "AI Challenger keypoints", _SEE, ("other",), "see source (challenge terms; no licence statement confirmed here)",
        "https://arxiv.org/abs/1711.06475", "", """@article{wu2017aichallenger,
  title={{AI} Challenger: A Large-scale Dataset for Going Deeper in Image Understanding},
  author={Wu, Jiahong and Zheng, He and Zhao, Bo and Li, Yixin and Yan, Baoming and Liang, Rui and Wang, Wenjia and Zhou, Shipei and Lin, Guosen and Fu, Yanwei and Wang, Yizhou and Wang, Yonggang},
  journal={arXiv preprint arXiv:1711.06475},
  year={2017}
}"""),
}

INSTRUCTDIFFUSION_BIB = """@article{geng2023instructdiffusion,
  title={{InstructDiffusion}: A Generalist Modeling Interface for Vision Tasks},
  author={Geng, Zigang and Yang, Binxin and Hang, Tiankai and Li, Chen and Gu, Shuyang and Zhang, Ting and Bao, Jianmin and Zhang, Zheng and Hu, Han and Chen, Dong and Guo, Baining},
  journal={arXiv preprint arXiv:2309.03895},
  year={2023}
}"""

UNKNOWN_LICENCE = "LicenseRef-unknown"

#: dataset short name (a row's ``dataset``) -> licence id (SPDX expression, ``LicenseRef-*`` otherwise)
DATASET_LICENCES: dict[str, str] = {k: v.licence for k, v in SOURCES.items()}


def licence_for(dataset: str | None) -> str:
    """The licence id of a source dataset (``LicenseRef-unknown`` for one not in the table, e.g. your own
    ``triplets`` data: set ``meta["provenance"]["licence"]`` yourself)."""
    return DATASET_LICENCES.get(str(dataset or ""), UNKNOWN_LICENCE)


def provenance_for(dataset: str, record_id: Any, **extra: Any) -> dict:
    """``meta["provenance"]`` for a row of ``dataset`` made from record ``record_id``: ``source_id`` and
    ``licence`` (what the writer copies into the sidecar columns of the same names), plus ``extra``
    (e.g. ``image=`` the source image id, which ``idd takedown`` also matches). A value the row already
    has in its provenance wins (callers merge: ``{**provenance_for(...), **meta.get("provenance", {})}``)."""
    out = {"source_id": str(record_id), "licence": licence_for(dataset), "dataset": dataset}
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


# --------------------------------------------------------------------------------------------------
# Outputs under a root


@dataclass
class OutputCard:
    """What the card says about one output (its current generation)."""

    rel: str                  # the output folder relative to the card's root ("" when the root is the output)
    name: str
    version: str
    generation: int
    gen_rel: str              # the generation folder relative to the card's root
    manifest: dict
    train_tars: list[str] = field(default_factory=list)      # relative to the card's root
    train_parquets: list[str] = field(default_factory=list)
    rejected_tars: list[str] = field(default_factory=list)
    train_rows: int = 0
    rejected_rows: int = 0
    train_bytes: int = 0      # bytes of the tars (the split sizes in the card's ``dataset_info``)
    rejected_bytes: int = 0
    members: set[str] = field(default_factory=set)            # member suffixes of the train split ("src.jpg", "txt")
    rejected_members: set[str] = field(default_factory=set)
    tasks: dict[str, int] = field(default_factory=dict)
    datasets: dict[str, int] = field(default_factory=dict)
    licences: dict[str, int] = field(default_factory=dict)   # the rows' licence column (train)
    config_name: str = ""

    @property
    def label(self) -> str:
        return f"{self.name}/{self.version}"


def _posix(rel: Path | str) -> str:
    s = Path(rel).as_posix()
    return "" if s == "." else s


def _join(*parts: str) -> str:
    return "/".join(p for p in parts if p)


def find_outputs(root: Path) -> list[Path]:
    """Output folders under ``root``: ``root`` itself when it is one, else ``root/<name>/<version>`` (and
    ``root/<name>`` when that holds the manifest), sorted."""
    from .generations import is_output

    if is_output(root):
        return [root]
    found = []
    for d in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_output(d):
            found.append(d)
            continue
        for v in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if is_output(v):
                found.append(v)
    return found


def _member_suffix(member: str | None) -> str | None:
    if not member:
        return None
    return member.split(".", 1)[1] if "." in member else None


def read_output(root: Path, out_dir: Path, *, with_rejected: bool = False) -> OutputCard:
    """The card facts of one output: its current generation's shard lists from the manifest, checked
    against the files (missing file or row count different from the manifest: UserError), and the member
    names, tasks, datasets and licences from the train sidecars."""
    import pyarrow.parquet as pq

    from .errors import UserError
    from .generations import current

    gen = current(out_dir)
    m = gen.manifest or {}
    rel = _posix(out_dir.relative_to(root))
    gen_rel = _join(rel, gen.rel)
    oc = OutputCard(rel=rel, name=str(m.get("name") or out_dir.parent.name), version=str(m.get("version") or out_dir.name),
                    generation=gen.number, gen_rel=gen_rel, manifest=m)
    splits = m.get("splits") or {}
    where = gen.manifest_loc
    cols = ["task", "dataset", "licence", *(f"{r}_member" for r in IMAGE_ROLES), "instruction"]
    for split in ("train", "rejected"):
        info = splits.get(split) or {}
        for i, e in enumerate(info.get("shards") or []):
            tar, pqf = e.get("tar"), e.get("parquet")
            if not isinstance(tar, str) or not isinstance(pqf, str):
                raise UserError(f"{where}: field splits.{split}.shards[{i}]: expected tar and parquet paths")
            tar_path, pq_path = Path(gen.path) / tar, Path(gen.path) / pqf
            for p in (tar_path, pq_path):
                if not p.is_file():
                    raise UserError(f"{p}: missing (listed in {where} as splits.{split}.shards[{i}])")
            if split == "rejected":
                if e.get("rows"):
                    oc.rejected_tars.append(_join(gen_rel, tar))
                oc.rejected_rows += int(e.get("rows") or 0)
                oc.rejected_bytes += tar_path.stat().st_size
                if not with_rejected:
                    continue
            table = pq.read_table(pq_path, columns=cols)
            if table.num_rows != e.get("rows"):
                raise UserError(f"{pq_path}: damaged shard: {table.num_rows} rows, the manifest {where} says {e.get('rows')}")
            d = table.to_pydict()
            members = oc.members if split == "train" else oc.rejected_members
            for role in IMAGE_ROLES:
                members.update(s for s in map(_member_suffix, d[f"{role}_member"]) if s)
            if any(t is not None for t in d["instruction"]):
                members.add("txt")
            members.add("json")
            if split == "train":
                if table.num_rows:  # a shard whose rows were all dropped adds an empty tar: left out
                    oc.train_tars.append(_join(gen_rel, tar))
                    oc.train_parquets.append(_join(gen_rel, pqf))
                oc.train_rows += table.num_rows
                oc.train_bytes += tar_path.stat().st_size
                for key, acc in (("task", oc.tasks), ("dataset", oc.datasets), ("licence", oc.licences)):
                    for v in d[key]:
                        k = v if v is not None else ("(none)" if key == "licence" else "")
                        acc[k] = acc.get(k, 0) + 1
    return oc


_CONFIG_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def assign_config_names(outputs: list[OutputCard]) -> None:
    """``name`` when one version of that output is under the root, ``name_version`` when several."""
    by_name: dict[str, int] = {}
    for o in outputs:
        by_name[o.name] = by_name.get(o.name, 0) + 1
    taken: set[str] = set()
    for o in outputs:
        base = o.name if by_name[o.name] == 1 else f"{o.name}_{o.version}"
        base = _CONFIG_SAFE.sub("_", base).strip("_") or "output"
        name, i = base, 2
        while name in taken or name == "default":
            name, i = f"{base}_{i}", i + 1
        taken.add(name)
        o.config_name = name


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
