"""The per-source licence and citation table (docs/shard-format.md, "Stock readers").

:data:`SOURCES` holds, per source dataset (a row's ``dataset``), its display name, licence id, terms, link and
BibTeX; :data:`DATASET_LICENCES` maps a row's ``dataset`` to a licence id (an SPDX expression; ``LicenseRef-*``
where no SPDX id exists); :func:`provenance_for` builds the ``meta["provenance"]`` the writer turns into
the sidecar's ``source_id`` and ``licence`` columns. The dataset card (:mod:`.card`) prints the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


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
