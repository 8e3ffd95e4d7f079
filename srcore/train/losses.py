"""Reconstruction and distillation losses.

Distillation terms compare a student's features with a frozen teacher's: the deep feature map
before the upsampler (DVMSR's reading of its paper) and, for multi-depth distillation, the
outputs of several body stages. Learnable 1x1 adapters map student widths to teacher widths;
they live only in training and are never exported with the student.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from srcore.errors import ConfigError
from srcore.models.base import Features

__all__ = ["DistillationLoss", "depth_mapping", "reconstruction_loss"]


def reconstruction_loss(sr: torch.Tensor, hr: torch.Tensor, kind: str = "l1",
                        eps: float = 1e-3) -> torch.Tensor:
    if kind == "l1":
        return F.l1_loss(sr, hr)
    if kind == "charbonnier":
        return torch.sqrt((sr - hr) ** 2 + eps**2).mean()
    raise ConfigError(f"unknown loss {kind!r}; use l1 or charbonnier")


def depth_mapping(n_student: int, n_teacher: int, spec: Sequence[int] | str = "proportional") -> list[int]:
    """Teacher stage index for every student stage: proportional (last to last) or explicit."""
    if spec == "proportional":
        return [round((i + 1) * n_teacher / n_student) - 1 for i in range(n_student)]
    mapping = list(spec)
    if len(mapping) != n_student or any(not 0 <= t < n_teacher for t in mapping):
        raise ConfigError(f"depth_map {mapping} must give one teacher stage in [0, {n_teacher}) "
                          f"for each of the {n_student} student stages")
    return mapping


def _adapter(c_in: int, c_out: int) -> nn.Module:
    return nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)


class DistillationLoss(nn.Module):
    """Weighted sum of output, deep-feature and multi-depth feature distillation terms."""

    def __init__(self, student_feats: Features, teacher_feats: Features, w_out: float = 0.0,
                 w_feat: float = 1.0,
                 w_depth: float = 0.0, depth_weights: Sequence[float] | None = None,
                 depth_map: Sequence[int] | str = "proportional", feat_norm: str = "none") -> None:
        super().__init__()
        self.w_out, self.w_feat, self.w_depth = w_out, w_feat, w_depth
        if feat_norm not in ("none", "teacher"):
            raise ConfigError(f"feat_norm {feat_norm!r}: use none or teacher")
        self.feat_norm = feat_norm
        # Adapters exist only for terms that are on: an unused adapter would be a parameter without a
        # gradient, which DDP refuses on every rank.
        self.feat_adapter = (_adapter(student_feats.deep.shape[1], teacher_feats.deep.shape[1]) if w_feat
                             else nn.Identity())
        n_s, n_t = len(student_feats.blocks), len(teacher_feats.blocks)
        self.mapping = depth_mapping(n_s, n_t, depth_map) if w_depth > 0 else []
        weights = list(depth_weights) if depth_weights is not None else [1.0 / max(1, n_s)] * n_s
        if w_depth > 0 and len(weights) != n_s:
            raise ConfigError(f"depth_weights has {len(weights)} entries for {n_s} student stages")
        self.depth_weights = weights
        self.depth_adapters = nn.ModuleList(
            _adapter(student_feats.blocks[i].shape[1], teacher_feats.blocks[t].shape[1])
            for i, t in enumerate(self.mapping))

    def _feature_l1(self, student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        """L1 between adapted student and teacher features; with ``feat_norm="teacher"`` relative to the
        teacher feature's mean magnitude, so a teacher whose features are ~100x larger (RLFN works on a
        0-255 range) does not drown the reconstruction term."""
        loss = F.l1_loss(student, teacher)
        if self.feat_norm == "teacher":
            loss = loss / teacher.abs().mean().clamp_min(1e-6)
        return loss

    def forward(self, sr: torch.Tensor, s: Features, t_sr: torch.Tensor,
                t: Features) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.w_out:
            terms["out"] = self.w_out * F.l1_loss(sr, t_sr)
        if self.w_feat:
            terms["feat"] = self.w_feat * self._feature_l1(self.feat_adapter(s.deep), t.deep)
        if self.w_depth:
            total = sr.new_zeros(())
            pairs = zip(self.mapping, self.depth_weights, self.depth_adapters, strict=False)
            for i, (tj, w, ad) in enumerate(pairs):
                total = total + w * self._feature_l1(ad(s.blocks[i]), t.blocks[tj])
            terms["depth"] = self.w_depth * total
        return terms
