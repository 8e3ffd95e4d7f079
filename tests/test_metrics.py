import numpy as np
import pytest
from skimage.metrics import structural_similarity

from srcore.metrics import psnr_rgb, psnr_ssim_y, psnr_y, rgb_to_y, ssim, ssim_y


def _pair(seed=0, shape=(64, 48, 3)):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    noise = rng.normal(0, 8, size=shape)
    b = np.clip(a + noise, 0, 255).round().astype(np.uint8)
    return a, b


def test_y_channel_coefficients():
    white = np.full((1, 1, 3), 255, dtype=np.uint8)
    black = np.zeros((1, 1, 3), dtype=np.uint8)
    assert rgb_to_y(white)[0, 0] == pytest.approx(235.0)
    assert rgb_to_y(black)[0, 0] == pytest.approx(16.0)


def test_psnr_y_by_hand():
    a, b = _pair()
    ya, yb = rgb_to_y(a)[4:-4, 4:-4], rgb_to_y(b)[4:-4, 4:-4]
    expected = 10 * np.log10(255**2 / np.mean((ya - yb) ** 2))
    assert psnr_y(a, b, border=4) == pytest.approx(expected, abs=1e-10)
    assert psnr_y(a, a) == float("inf")


def test_psnr_rgb_option():
    a, b = _pair(1)
    expected = 10 * np.log10(255**2 / np.mean((a.astype(float) - b.astype(float)) ** 2))
    assert psnr_rgb(a, b) == pytest.approx(expected)


@pytest.mark.parametrize("border", [0, 2, 4])
def test_ssim_matches_skimage(border):
    a, b = _pair(2, (80, 70, 3))
    ya = rgb_to_y(a)[border:80 - border, border:70 - border]
    yb = rgb_to_y(b)[border:80 - border, border:70 - border]
    ref = structural_similarity(ya, yb, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                data_range=255)
    assert ssim_y(a, b, border=border) == pytest.approx(ref, abs=1e-7)


def test_refuses_bad_inputs():
    a, b = _pair()
    with pytest.raises(ValueError, match="shape mismatch"):
        psnr_y(a, b[:-1])
    with pytest.raises(TypeError, match="dtype"):
        psnr_y(a.astype(np.int32), b.astype(np.int32))
    with pytest.raises(ValueError, match=r"\[0, 255\]"):
        ssim_y(a / 255.0 * 300, b.astype(float))
    with pytest.raises(ValueError, match="crops away"):
        psnr_y(a, b, border=24)
    with pytest.raises(ValueError, match="HxW"):
        psnr_y(a[..., :2], b[..., :2])


def _ssim_2d_reference(a, b):
    """The textbook form: five moment maps filtered by the full 11x11 window (torch conv2d, float64)."""
    import torch
    import torch.nn.functional as F

    ax = torch.arange(11, dtype=torch.float64) - 5
    g = torch.exp(-(ax**2) / (2 * 1.5**2))
    g = g / g.sum()
    win = torch.outer(g, g)[None, None]
    x, y = torch.from_numpy(a)[None, None], torch.from_numpy(b)[None, None]
    mu_x, mu_y, xx, yy, xy = F.conv2d(torch.cat([x, y, x * x, y * y, x * y]), win)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    num = (2 * mu_x * mu_y + c1) * (2 * (xy - mu_x * mu_y) + c2)
    den = (mu_x**2 + mu_y**2 + c1) * (xx - mu_x**2 + yy - mu_y**2 + c2)
    return float((num / den).mean())


@pytest.mark.parametrize("shape", [(11, 11), (11, 40), (97, 53)])
def test_separable_ssim_equals_2d_window(shape):
    rng = np.random.default_rng(3)
    a = rng.uniform(16, 235, size=shape)
    b = np.clip(a + rng.normal(0, 12, size=shape), 0, 255)
    assert ssim(a, b) == pytest.approx(_ssim_2d_reference(a, b), abs=1e-9)
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="11x11"):
        ssim(a[:10], b[:10])


def test_psnr_and_ssim_in_one_call():
    a, b = _pair(4, (60, 50, 3))
    assert psnr_ssim_y(a, b, 3) == (psnr_y(a, b, 3), ssim_y(a, b, 3))
