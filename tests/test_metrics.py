import numpy as np
import pytest
from skimage.metrics import structural_similarity

from srcore.metrics import psnr_rgb, psnr_y, rgb_to_y, ssim_y


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
