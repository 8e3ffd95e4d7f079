"""MaIR (Li et al., CVPR 2025): Mamba with nested S-shaped scans and sequence shuffle attention.

Same shell as DVMSR; each residual-group block (RMB) runs a VMM over four NSS sequences, each
with its own projections and SSM parameters, merged by SSA. Official key names are kept except
the final norm (``norm`` officially, ``norm_f`` in our shell), which the converter renames.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from srcore.models.layers import ChannelMajorLinear, DropPath
from srcore.models.shell import ShellConfig, TokenShell
from srcore.ops.nss import nss_indices, nss_indices_of
from srcore.ops.nss_scan import nss_selective_scan

__all__ = ["MaIR", "MaIRConfig", "TINY", "SMALL", "convert_official"]

TINY = {"embed_dim": 60, "depths": (6, 6, 6, 6), "d_state": 1, "ssm_ratio": 1.1, "mlp_ratio": 1.6,
        "scan_len": 8}
SMALL = {"embed_dim": 60, "depths": (6, 6, 6, 6), "d_state": 16, "ssm_ratio": 1.4, "mlp_ratio": 1.6,
         "scan_len": 4}
_SEQS = 4


class MaIRConfig(ShellConfig):
    d_state: int = 16
    ssm_ratio: float = 1.4
    mlp_ratio: float = 1.6
    scan_len: int = 4


class SSA(nn.Module):
    """Sequence shuffle attention over the four un-permuted sequence outputs."""

    def __init__(self, d_inner: int) -> None:
        super().__init__()
        self.gating = nn.Sequential(nn.AdaptiveAvgPool2d(1),
                                    nn.Conv2d(_SEQS * d_inner, _SEQS * d_inner, 1, groups=d_inner),
                                    nn.Sigmoid())

    def forward(self, ys: torch.Tensor) -> torch.Tensor:
        """ys: (B, 4, D, H, W) -> (B, D, H, W)."""
        b, k, d, h, w = ys.shape
        # Pooling commutes with the channel shuffle, so the (B, D, 4) means are shuffled, not the
        # maps; the grouped 1x1 conv on them is a 4x4 matrix per channel (an einsum: as a conv of a
        # 1x1 map it costs more in set-up than in arithmetic).
        pooled = ys.mean(dim=(3, 4)).transpose(1, 2)  # (B, D, 4): a channel's 4 copies adjacent
        conv = self.gating[1]
        mixed = torch.einsum("bdk,djk->bdj", pooled, conv.weight.view(d, k, k)) + conv.bias.view(d, k)
        weights = torch.sigmoid(mixed).transpose(1, 2)[..., None, None]  # un-shuffle: (B, 4, D, 1, 1)
        return (ys * weights).sum(dim=1)


class VMM(nn.Module):
    """Visual Mamba module with NSS: in_proj -> dwconv+SiLU -> 4 scans -> SSA -> LN -> gate -> out_proj."""

    def __init__(self, dim: int, cfg: MaIRConfig, shift: bool) -> None:
        super().__init__()
        self.d_inner = d = int(cfg.ssm_ratio * dim)
        self.d_state = n = cfg.d_state
        self.dt_rank = r = math.ceil(dim / 16)
        self.stripe, self.shift = cfg.scan_len, shift
        self.in_proj = ChannelMajorLinear(dim, 2 * d, bias=False)
        self.conv2d = nn.Conv2d(d, d, 3, padding=1, groups=d)
        self.x_proj_weight = nn.Parameter(torch.randn(_SEQS, r + 2 * n, d) * d**-0.5)
        self.dt_projs_weight = nn.Parameter(torch.empty(_SEQS, d, r).uniform_(-(r**-0.5), r**-0.5))
        dt = torch.exp(
            torch.rand(_SEQS, d) * (math.log(0.1) - math.log(1e-3)) + math.log(1e-3)
        ).clamp(min=1e-4)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_logs = nn.Parameter(
            torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(_SEQS * d, 1))
        self.Ds = nn.Parameter(torch.ones(_SEQS * d))
        self.gating = SSA(d)
        self.out_norm = nn.LayerNorm(d)
        self.out_proj = nn.Linear(d, dim, bias=False)
        self.scan_backend: str | None = None  # None: chosen by device (see srcore.ops.selective_scan)

    def forward(self, x: torch.Tensor, orders: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C); ``orders``: (order, inverse) of this block's NSS scan,
        computed here when not given."""
        b, h, w, c = x.shape
        u, z = self.in_proj(x.reshape(b, h * w, c)).chunk(2, dim=1)
        u = F.silu(self.conv2d(u.view(b, -1, h, w))).flatten(2)  # (B, D, L) row-major
        order, inverse = orders if orders is not None else scan_orders(u.view(b, -1, h, w), self.stripe,
                                                                          self.shift)
        ys = self._scan(u, order, inverse)
        y = self.gating(ys.view(b, _SEQS, self.d_inner, h, w))
        y = self.out_norm(y.permute(0, 2, 3, 1)) * F.silu(z.transpose(1, 2).view(b, h, w, -1))
        return self.out_proj(y)

    def _scan(self, u: torch.Tensor, order: torch.Tensor, inverse: torch.Tensor) -> torch.Tensor:
        """The four scans of u (B, D, L) along ``order``, (B, 4, D, L) in image order.

        The projections act per position, so they run in image order, as matmuls that write the
        layouts the scan reads: delta channel-major (B, 4, D, L), B and C token-major views of
        (B, L, 4, R + 2N). ``nss_selective_scan`` then reads every sequence through its order
        (the cpu and triton kernels) or gathers it (other back-ends, and gradients on the cpu).
        """
        b, _, length = u.shape
        k, c = self.x_proj_weight.shape[:2]
        x_dbl = torch.matmul(u.transpose(1, 2), self.x_proj_weight.reshape(k * c, -1).t())
        x_dbl = x_dbl.view(b, length, k, c)
        dts, bs, cs = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = torch.matmul(self.dt_projs_weight, dts.permute(0, 2, 3, 1))  # (B, 4, D, L)
        ys = nss_selective_scan(u, delta.view(b, -1, length), -torch.exp(self.A_logs.float()),
                                bs.permute(0, 2, 3, 1), cs.permute(0, 2, 3, 1), order, D=self.Ds.float(),
                                delta_bias=self.dt_projs_bias.reshape(-1).float(), delta_softplus=True,
                                backend=self.scan_backend, inverse=inverse)
        return ys.view(b, _SEQS, self.d_inner, length)


class MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class RMB(nn.Module):
    """Residual Mamba block with learnable per-channel skip scales."""

    def __init__(self, dim: int, cfg: MaIRConfig, shift: bool, drop_path: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.self_attention = VMM(dim, cfg, shift)
        self.drop_path = DropPath(drop_path)
        self.skip_scale = nn.Parameter(torch.ones(dim))
        self.ln_2 = nn.LayerNorm(dim)
        self.conv_blk = MLP(dim, int(dim * cfg.mlp_ratio))
        self.skip_scale2 = nn.Parameter(torch.ones(dim))

    def forward(self, tokens: torch.Tensor, context: tuple) -> torch.Tensor:
        """``context``: (H, W, orders), orders[shift] being the (order, inverse) of each NSS variant."""
        b, _, c = tokens.shape
        x = tokens.view(b, context[0], context[1], c)
        orders = context[2][int(self.self_attention.shift)]
        x = x * self.skip_scale + self.drop_path(self.self_attention(self.ln_1(x), orders))
        x = x * self.skip_scale2 + self.conv_blk(self.ln_2(x))
        return x.view(b, -1, c)


class MaIR(TokenShell):
    arch = "mair"

    def __init__(self, config: MaIRConfig | None = None) -> None:
        cfg = config or MaIRConfig()
        super().__init__(cfg, lambda dim, _g, bi, dp: RMB(dim, cfg, shift=bi % 2 == 1, drop_path=dp))

    def block_context(self, x: torch.Tensor) -> tuple:
        """(H, W, orders): the NSS orders of the plain and the shifted blocks, computed once for all."""
        stripe = self.config.scan_len
        return (*x.shape[-2:], tuple(scan_orders(x, stripe, shift) for shift in (False, True)))


def scan_orders(x: torch.Tensor, stripe: int, shift: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, inverse) of the NSS scans of a (B, C, H, W) map. While tracing (export) they are
    computed inside the graph from its shape, so the exported model takes any size; otherwise
    they come from the cache, on x's device."""
    if torch.jit.is_tracing():
        return nss_indices_of(x, stripe, shift)
    return nss_indices(x.shape[-2], x.shape[-1], stripe, shift, x.device)


def convert_official(state_dict: dict) -> dict:
    """Official MaIR keys -> ours: the final ``norm.*`` is ``norm_f.*`` in the shared shell."""
    return {("norm_f." + k[5:] if k.startswith("norm.") else k): v for k, v in state_dict.items()}
