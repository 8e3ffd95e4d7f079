import numpy as np
import pytest
import torch
from references import matlab_imresize_numpy, matlab_round_uint8

from srcore.data.imresize import imresize, imresize_np


@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2, 3, 4, 0.37, 1.7])
@pytest.mark.parametrize("shape", [(24, 36), (17, 23)])
def test_matches_float64_reference(scale, shape):
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size=shape + (3,))
    ours = imresize_np(img, scale=scale)
    ref = matlab_imresize_numpy(img, scale)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-9)


def test_uint8_round_trip_matches_reference_bit_for_bit():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(48, 60, 3), dtype=np.uint8)
    for s in (2, 3, 4):
        lr = imresize_np(img, scale=1 / s)
        assert lr.dtype == np.uint8 and lr.shape == (48 // s, 60 // s, 3)
        np.testing.assert_array_equal(lr, matlab_round_uint8(matlab_imresize_numpy(img, 1 / s)))
        up = imresize_np(lr, scale=s)
        np.testing.assert_array_equal(up, matlab_round_uint8(matlab_imresize_numpy(lr, s)))


def test_batched_torch_float32_and_size():
    x = torch.rand(2, 3, 30, 40, dtype=torch.float64)
    y = imresize(x, scale=0.25)
    assert y.shape == (2, 3, 8, 10)
    y32 = imresize(x.float(), scale=0.25)
    assert y32.dtype == torch.float32
    assert torch.allclose(y32.double(), y, atol=1e-5)
    for b in range(2):
        ref = matlab_imresize_numpy(x[b].permute(1, 2, 0).numpy(), 0.25)
        np.testing.assert_allclose(y[b].permute(1, 2, 0).numpy(), ref, atol=1e-9)
    z = imresize(x, size=(13, 21))
    assert z.shape == (2, 3, 13, 21)


def test_constant_image_is_preserved():
    x = torch.full((1, 1, 20, 20), 0.3, dtype=torch.float64)
    assert torch.allclose(imresize(x, scale=1 / 3), torch.tensor(0.3, dtype=torch.float64))


def test_bad_inputs():
    with pytest.raises(TypeError, match="float"):
        imresize(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), scale=0.5)
    with pytest.raises(ValueError, match="scale or size"):
        imresize(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="positive"):
        imresize(torch.zeros(1, 3, 8, 8), scale=-2)
