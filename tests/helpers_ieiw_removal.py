"""Shared pieces of the IEIW removal tests: tiny TorchScript inpainters and demo data."""

from __future__ import annotations

from pathlib import Path

import torch


class FillGrey(torch.nn.Module):
    """LaMa's contract: (img [B,3,H,W] 0..1, mask [B,1,H,W] {0,1}) -> [B,3,H,W]; fills the mask with 0.5."""

    def forward(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(img.dtype)
        return img * (1 - m) + 0.5 * m


class Identity(torch.nn.Module):
    """Returns the image untouched: a broken inpainter the removal check must catch."""

    def forward(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return img + 0 * mask.to(img.dtype)


class TinyConvNet(torch.nn.Module):
    """A small random conv net over the LaMa input (masked image + mask): a model with weights."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 3, 3, padding=1), torch.nn.Sigmoid())

    def forward(self, img: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.to(img.dtype)
        x = torch.cat([img * (1 - m), m], dim=1)
        return self.body(x)


def save_script(module: torch.nn.Module, path: Path) -> Path:
    torch.jit.script(module.eval()).save(str(path))
    return path
