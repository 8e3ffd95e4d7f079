"""The GPU-side training settings, trained on the CPU: bf16 autocast (``amp: bf16``) against fp32,
channels-last, and ``torch.compile`` of the training step through the numba scan's fake registration.
Each run is the pipeline's own loop (``train_in_process``) on a tiny DVMSR, same seed and batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from srcore.config import LoaderParams, PrepareParams, TrainParams
from srcore.data.prepare import prepare
from srcore.train.loop import train_in_process

STEPS = 12
# bf16 keeps 8 significant bits: every activation is off by up to 2^-9 (0.2%) of itself, and the L1
# loss of a batch averages thousands of them, so on the first step (same weights, same batch) the
# loss moves well under 1%; after a dozen Adam steps the two trajectories part a little more, under
# 5% on the mean of the last steps (measured: under 1% and under 2%).
FIRST_STEP_REL = 1e-2
LAST_STEPS_REL = 5e-2


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision")
    (root / "raw").mkdir()
    yy, xx = np.mgrid[0:96, 0:96]
    for i in range(3):
        base = 128 + 80 * np.sin(xx / (5 + i)) * np.cos(yy / (7 + i))
        img = np.stack([base, np.roll(base, 9, 0), np.roll(base, 17, 1)], -1).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(root / "raw" / f"im{i}.png")
    prepare(PrepareParams(input=str(root / "raw"), out=str(root / "patches"), scales=(2,), crop_size=48,
                          step=24, workers=1))
    return root


def _train(root, **settings) -> tuple[list[float], torch.nn.Module]:
    torch.manual_seed(0)
    train = TrainParams(model="dvmsr", scale=2, model_overrides={"embed_dim": 8, "depths": [1]}, steps=STEPS,
                        lr=2e-3, ema_decay=None, **settings).model_dump(mode="json")
    loader = LoaderParams(patch_size=12, batch_size=4, shuffle_buffer=8).model_dump(mode="json")
    config = {"stage": "teacher", "train": train, "loader": loader, "shards": str(root / "patches"),
              "cwd": str(root), "run_dir": str(root / "run"), "faults": {}}
    losses: list[float] = []
    state = train_in_process(config)
    losses = [float(v) for v in state.window]
    return losses, state.trainable


def test_bf16_autocast_trains_on_the_cpu_close_to_fp32(shards):
    seen: list[torch.dtype] = []
    fp32, _ = _train(shards, amp="off")
    hook = torch.nn.modules.module.register_module_forward_hook(
        lambda m, _i, out: seen.append(out.dtype) if isinstance(m, torch.nn.Conv2d) else None)
    try:
        bf16, _ = _train(shards, amp="bf16")
    finally:
        hook.remove()
    assert torch.bfloat16 in seen  # the convolutions ran in bf16
    assert len(fp32) == len(bf16) == STEPS and all(math.isfinite(v) for v in bf16)
    assert abs(bf16[0] - fp32[0]) <= FIRST_STEP_REL * fp32[0]
    tail = slice(-4, None)
    assert abs(np.mean(bf16[tail]) - np.mean(fp32[tail])) <= LAST_STEPS_REL * np.mean(fp32[tail])


def test_amp_setting_reads_old_booleans_and_refuses_others():
    assert TrainParams(amp=True).amp == "auto" and TrainParams(amp=False).amp == "off"
    with pytest.raises(ValueError, match="amp"):
        TrainParams(amp="fp8")


def test_channels_last_trains_like_the_default_layout(shards):
    default, _ = _train(shards)
    last, model = _train(shards, channels_last=True)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert np.allclose(last, default, rtol=1e-3)


def test_compiled_training_step_matches_eager(shards, monkeypatch):
    """``compile: true`` through AOT autograd, which traces forward and backward with fake tensors (the
    custom scan ops' fake registrations); the ``aot_eager`` back-end skips inductor's code generation
    (minutes on two cores), which adds nothing to what is tested here."""
    import functools

    eager, _ = _train(shards)
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled, model = _train(shards, compile=True)
    assert np.allclose(compiled, eager, rtol=1e-3), (compiled, eager)
