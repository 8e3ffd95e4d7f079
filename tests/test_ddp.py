"""Data-parallel training averages gradients: two Ray Train workers, each given half of a batch, end a
step with the gradients and weights of one worker given the whole batch. Both run the pipeline's own
``setup``, DDP wrapping and ``train_step`` (``srcore.train.loop``) on the same fixed batches."""

from __future__ import annotations

import pytest
import torch

from srcore.config import LoaderParams, TrainParams

pytestmark = pytest.mark.slow

BATCH = 8  # the whole batch; each of the two workers takes half
STEPS = 2
# The two runs do the same arithmetic in float32 except for the order of the sums: a gradient is the
# mean of two half-batch means (after DDP's all-reduce) instead of one mean over the batch, which
# moves it by a few units in the last place (measured: 3e-8 relative). Adam then divides by sqrt(v),
# so a weight differs by at most a few ulps of lr per step: 1e-6 relative on the gradients and 1e-7
# absolute on the weights leave room for that and fail on any real difference (a gradient summed
# instead of averaged is off by 2x; a rank training on its own gradients drifts by ~lr a step).
GRAD_RTOL, GRAD_ATOL = 1e-5, 1e-8
WEIGHT_ATOL = 1e-7


def _config() -> dict:
    train = TrainParams(model="dvmsr", scale=2, model_overrides={"embed_dim": 8, "depths": [1]}, steps=STEPS,
                        lr=2e-3, ema_decay=None, ray={"cpus_per_worker": 1}).model_dump(mode="json")
    loader = LoaderParams(patch_size=12, batch_size=BATCH).model_dump(mode="json")
    return {"stage": "teacher", "train": train, "loader": loader, "shards": "", "cwd": ".",
            "run_dir": "unused", "faults": {}}


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(7)
    return [(torch.rand(BATCH, 3, 12, 12, generator=g), torch.rand(BATCH, 3, 24, 24, generator=g))
            for _ in range(STEPS)]


def _flat(tensors) -> list[float]:
    return torch.cat([t.detach().reshape(-1) for t in tensors]).tolist()


def _train(config: dict, rank: int, world: int, wrap) -> dict[str, list[float]]:
    from srcore.train.loop import setup, train_step

    state = setup(config, rank, world, torch.device("cpu"))
    wrap(state)
    for lr_img, hr_img in _batches():
        part = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
        train_step(state, lr_img[part], hr_img[part])
    params = [p for p in state.model.parameters() if p.requires_grad]
    return {"grads": _flat(p.grad for p in params), "weights": _flat(params)}


def _worker(config: dict) -> None:
    import ray.train

    from srcore.train.loop import _connect_ranks

    ctx = ray.train.get_context()
    out = _train(config, ctx.get_world_rank(), ctx.get_world_size(), _connect_ranks)
    if ctx.get_world_rank() == 0:
        config["out"].put(out)


def test_two_workers_with_half_batches_equal_one_worker_with_the_whole_batch(ray_local, tmp_path):
    import sys

    import ray.train
    from ray import cloudpickle
    from ray.train.torch import TorchTrainer
    from ray.util.queue import Queue

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the workers cannot import tests/

    def plain(state) -> None:
        state.runner = state.trainable

    one = _train(_config(), 0, 1, plain)
    out = Queue(actor_options={"num_cpus": 0})
    scaling = ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1})
    TorchTrainer(_worker, train_loop_config={**_config(), "out": out}, scaling_config=scaling,
                 run_config=ray.train.RunConfig(name="ddp", storage_path=str(tmp_path))).fit()
    two = out.get(timeout=10)
    grads_one, grads_two = torch.tensor(one["grads"]), torch.tensor(two["grads"])
    assert grads_one.abs().max() > 1e-4  # a step that learns something
    torch.testing.assert_close(grads_two, grads_one, rtol=GRAD_RTOL, atol=GRAD_ATOL)
    torch.testing.assert_close(torch.tensor(two["weights"]), torch.tensor(one["weights"]), rtol=0,
                               atol=WEIGHT_ATOL)
