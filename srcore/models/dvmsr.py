"""DVMSR (Lei et al., CVPRW 2024): distillation-based vision Mamba for lightweight SR.

Rebuilt to the official computation, including its quirks: the ViMM has no residual of its
own (only the RSSB residual), tokens are the row-major flattening of the feature map, and the
Mamba mixer is mamba-ssm 1.x ``Mamba`` with its defaults. State-dict keys follow the official
release so official files load with an identity conversion.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from srcore.models.layers import ChannelMajorLinear, DropPath
from srcore.models.shell import ShellConfig, TokenShell
from srcore.ops import selective_scan

__all__ = ["DVMSRConfig", "DVMSR", "MambaMixer"]


class DVMSRConfig(ShellConfig):
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2


class MambaMixer(nn.Module):
    """mamba-ssm 1.x ``Mamba`` block (expand 2, causal depthwise conv1d, softplus dt, D skip, SiLU gate)."""

    # In the official model everything after in_proj runs inside mamba-ssm's fused
    # ``mamba_inner_fn``, which fvcore cannot see; the efficiency module uses this to report
    # the plain-fvcore count next to the full one.
    fvcore_visible = ("in_proj",)

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2) -> None:
        super().__init__()
        self.d_inner = expand * d_model
        self.d_state = d_state
        self.dt_rank = math.ceil(d_model / 16)
        self.in_proj = ChannelMajorLinear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, d_conv, groups=self.d_inner, padding=d_conv - 1)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(a))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)
        self.scan_backend: str | None = None  # None: chosen by device (see srcore.ops.selective_scan)
        self._init_dt()

    def _init_dt(self, dt_min: float = 1e-3, dt_max: float = 0.1) -> None:
        # mamba-ssm's init: dt_proj bias = softplus^-1(dt) with dt log-uniform in [dt_min, dt_max].
        std = self.dt_rank**-0.5
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=1e-4)
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, C).

        Each projection is one matmul that writes the layout its consumer reads, so nothing is
        copied between them: x, z and delta channel-major (B, D, L) (x and z are row blocks of one
        product), dt, B and C token-major (B, L, .), which the scan reads in place.
        """
        length = x.shape[1]
        xz = self.in_proj(x)  # (B, 2D, L)
        u, z = xz.chunk(2, dim=1)
        u = F.silu(self.conv1d(u)[..., :length])
        x_dbl = F.linear(u.transpose(1, 2), self.x_proj.weight)  # (B, L, R + 2N)
        dt, b, c = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = torch.bmm(self.dt_proj.weight.expand(dt.shape[0], -1, -1), dt.transpose(1, 2))  # (B, D, L)
        y = selective_scan(u, delta, -torch.exp(self.A_log.float()), b.transpose(1, 2), c.transpose(1, 2),
                           D=self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(), delta_softplus=True,
                           backend=self.scan_backend)
        return self.out_proj(y.transpose(1, 2))


class ViMM(nn.Module):
    """LayerNorm -> Mamba, deliberately without a residual (the official weights depend on it)."""

    def __init__(self, dim: int, cfg: DVMSRConfig, drop_path: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.mixer = MambaMixer(dim, cfg.d_state, cfg.d_conv, cfg.expand)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, hw: tuple[int, int] | None = None) -> torch.Tensor:
        return self.mixer(self.norm(self.drop_path(x)))


class DVMSR(TokenShell):
    arch = "dvmsr"

    def __init__(self, config: DVMSRConfig | None = None) -> None:
        cfg = config or DVMSRConfig()
        super().__init__(cfg, lambda dim, _g, _b, dp: ViMM(dim, cfg, dp))
