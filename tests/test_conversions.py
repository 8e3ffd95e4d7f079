"""Inference's image conversions: the numpy paths on the CPU give torch's bytes and memory layout."""

import numpy as np
import torch

from srcore.inference import to_tensor, to_uint8


def _torch_uint8(x):
    return x[0].clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def test_to_uint8_gives_the_bytes_of_torch_clamp_mul_round():
    rng = np.random.default_rng(0)
    noise = rng.uniform(-0.2, 1.2, size=(1, 3, 37, 41)).astype(np.float32)
    halves = np.array([(k + 0.5) / 255 for k in range(255)], dtype=np.float32)  # ties round to even
    edges = np.concatenate([halves, np.nextafter(halves, 2), np.nextafter(halves, -2),
                            np.array([0, -0.0, 1, 1e-30, -1e-30, 3e38, -3e38, np.inf, -np.inf], np.float32)])
    rows = np.tile(np.stack([edges, edges[::-1]]), (1, 3, 1, 1))
    for x in (torch.from_numpy(noise), torch.from_numpy(rows)):
        for layout in (x, x.contiguous(memory_format=torch.channels_last)):
            got, want = to_uint8(layout), _torch_uint8(layout)
            assert got.dtype == np.uint8 and got.strides == want.strides
            np.testing.assert_array_equal(got, want)


def test_to_tensor_gives_torch_float_division_in_a_channels_last_view():
    img = np.arange(256 * 3, dtype=np.int64).reshape(16, 16, 3).astype(np.uint8)
    want = torch.from_numpy(img).permute(2, 0, 1)[None].float().div_(255)
    got = to_tensor(img)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert got.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(got, want)
    strided = img[::2, ::-1]  # a view, as modcrop and callers may pass
    assert torch.equal(to_tensor(strided), torch.from_numpy(strided.copy()).permute(2, 0, 1)[None] / 255)
