import numpy as np
import pytest
import torch

from srcore.ops import selective_scan
from srcore.ops.nss import nss_indices, nss_orders, stripe_scan, stripe_widths
from srcore.ops.nss_scan import nss_selective_scan

SIZES = [(20, 28), (7, 9), (16, 16), (5, 3), (1, 11)]


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("stripe", [4, 8])
@pytest.mark.parametrize("shift", [False, True])
def test_each_order_is_a_permutation_with_inverse(h, w, stripe, shift):
    order, inverse = nss_indices(h, w, stripe, shift)
    assert order.shape == (4, h * w)
    feature = np.random.default_rng(0).normal(size=h * w)
    for k in range(4):
        assert sorted(order[k].tolist()) == list(range(h * w))
        seq = feature[order[k].numpy()]
        np.testing.assert_array_equal(seq[inverse[k].numpy()], feature)


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("shift", [False, True])
def test_seq0_steps_are_four_neighbours_inside_a_stripe(h, w, shift):
    stripe = 4
    order = stripe_scan(h, w, stripe, shift)
    widths = stripe_widths(w, stripe, shift)
    bounds = np.cumsum([0] + widths)
    stripe_of_col = np.searchsorted(bounds, np.arange(w), side="right") - 1
    for a, b in zip(order[:-1], order[1:], strict=True):
        (ya, xa), (yb, xb) = divmod(int(a), w), divmod(int(b), w)
        if stripe_of_col[xa] == stripe_of_col[xb]:
            assert abs(ya - yb) + abs(xa - xb) == 1


def test_stripe_walk_directions_and_remainder():
    order = stripe_scan(3, 10, 4)  # stripes of width 4, 4 and a remainder of 2
    grid = np.arange(30).reshape(3, 10)
    assert order[:4].tolist() == grid[0, :4].tolist()  # first row left to right
    assert order[4:8].tolist() == grid[1, 3::-1].tolist()  # next row right to left
    assert order[12] == grid[2, 4]  # stripe 1 starts at the bottom
    assert sorted(order[24:].tolist()) == sorted(grid[:, 8:].ravel().tolist())


def test_shifted_first_stripe_is_half_width():
    assert stripe_widths(28, 8, shift=True) == [4, 8, 8, 8]
    assert stripe_widths(28, 8, shift=False) == [8, 8, 8, 4]
    order = stripe_scan(4, 28, 8, shift=True)
    assert sorted(order[:16].tolist()) == sorted(np.arange(112).reshape(4, 28)[:, :4].ravel().tolist())


def test_sequences_are_rotations_and_transposes():
    h, w = 6, 10
    o = nss_orders(h, w, 4)
    grid = np.arange(h * w).reshape(h, w)
    assert o[1].tolist() == grid[::-1, ::-1].ravel()[stripe_scan(h, w, 4)].tolist()
    assert o[2].tolist() == grid.T.ravel()[stripe_scan(w, h, 4)].tolist()
    assert not np.array_equal(o[1], o[0][::-1])


def _nss_scan_inputs(bsz=2, dc=3, state=2, length=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = 4
    return (torch.randn(bsz, dc, length, generator=g, dtype=torch.float64),
            torch.randn(bsz, k * dc, length, generator=g, dtype=torch.float64),
            -torch.rand(k * dc, state, generator=g, dtype=torch.float64),
            torch.randn(bsz, k, state, length, generator=g, dtype=torch.float64),
            torch.randn(bsz, k, state, length, generator=g, dtype=torch.float64),
            torch.randn(k * dc, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_nss_scan_is_each_order_scanned_and_put_back(backend):
    # Oracle of the fused kernel: sequence k, scanned alone in its own order, lands at the map
    # positions it visited.
    u, delta, A, B, C, D = _nss_scan_inputs(length=4 * 5)
    order, inverse = nss_indices(4, 5, 4, True)
    y = nss_selective_scan(u, delta, A, B, C, order, D=D, delta_softplus=True, backend=backend)
    dc = u.shape[1]
    for k in range(4):
        ch = slice(k * dc, (k + 1) * dc)
        seq = selective_scan(u[:, :, order[k]], delta[:, ch][:, :, order[k]], A[ch], B[:, k][:, :, order[k]],
                             C[:, k][:, :, order[k]], D=D[ch], delta_softplus=True, backend="reference")
        torch.testing.assert_close(y[:, ch], seq[:, :, inverse[k]], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(y[:, :dc], selective_scan(u, delta[:, :dc], A[:dc], B[:, 0], C[:, 0], D=D[:dc],
                                                        delta_softplus=True, backend="reference"))


def test_nss_scan_refuses_mismatched_shapes():
    u, delta, A, B, C, _ = _nss_scan_inputs()
    order, _ = nss_indices(4, 5, 4, False)
    with pytest.raises(ValueError, match=r"order must be \(K, L\)"):
        nss_selective_scan(u, delta, A, B, C, order[:, :10])
    with pytest.raises(ValueError, match="delta must be"):
        nss_selective_scan(u, delta[:, :6], A, B, C, order)


def test_cpu_scan_reads_orders_and_strided_views_in_place():
    # The inference path of MaIR's VMM: u shared by the four sequences, B and C token-major views of
    # one projection, the orders read inside the numba kernel; no gradients. Against the gathered path.
    g = torch.Generator().manual_seed(1)
    bsz, dc, state, (h, w) = 2, 3, 4, (6, 7)
    u = torch.randn(bsz, dc, h * w, generator=g)
    delta = torch.randn(bsz, 4 * dc, h * w, generator=g)
    proj = torch.randn(bsz, h * w, 4, 2 * state, generator=g)  # (B, L, K, 2N): B and C side by side
    B, C = proj[..., :state].permute(0, 2, 3, 1), proj[..., state:].permute(0, 2, 3, 1)
    A = -torch.rand(4 * dc, state, generator=g)
    D, bias = torch.randn(2, 4 * dc, generator=g)
    order, _ = nss_indices(h, w, 4, True)
    args = (u, delta, A, B, C, order)
    got = nss_selective_scan(*args, D=D, delta_bias=bias, delta_softplus=True, backend="cpu")
    want = nss_selective_scan(*args, D=D, delta_bias=bias, delta_softplus=True, backend="reference")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
