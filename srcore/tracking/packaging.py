"""An MLflow pyfunc wrapper around srcore checkpoints, so a logged model runs on any image size.

MLflow's default PyTorch flavour exports a shape-specialised graph; instead we log our own
checkpoint file as an artifact and rebuild the model from its stored config when loaded.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np

__all__ = ["SRPyfunc", "signature"]

MODEL_ARTIFACT = "model"


class SRPyfunc(mlflow.pyfunc.PythonModel):
    """predict: (N, H, W, 3) uint8 LR images -> (N, sH, sW, 3) uint8 SR images."""

    def load_context(self, context) -> None:
        from srcore.models import load_model

        self.model = load_model(context.artifacts[MODEL_ARTIFACT]).eval()

    def predict(self, context, model_input, params=None):  # no type hints: MLflow would validate against them
        from srcore.inference import upscale_image

        batch = np.asarray(model_input)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.ndim != 4 or batch.shape[-1] != 3:
            raise ValueError(f"expected (N, H, W, 3) uint8 images, got shape {batch.shape}")
        return np.stack([upscale_image(self.model, img.astype(np.uint8)) for img in batch])


def signature():
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    spec = TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))
    return ModelSignature(inputs=Schema([spec]), outputs=Schema([spec]))
