"""params.yaml -> validated, typed settings.

Every stage reads its section from one file; unknown keys and bad values are refused with the
file, the dotted field path and what is wrong, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from srcore.errors import ConfigError

__all__ = ["PrepareParams", "LoaderParams", "EvalParams", "Params", "load_params", "DEFAULT_PARAMS_FILE"]

DEFAULT_PARAMS_FILE = Path("params.yaml")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrepareParams(_Section):
    """Sub-image extraction into Parquet shards (BasicSR's DF2K convention by default)."""

    input: str = "data/raw/sample/train"
    out: str = "data/patches"
    scales: tuple[int, ...] = (2, 3, 4)
    crop_size: int = 480
    step: int = 240
    thresh_size: int = 0
    encoding: Literal["raw", "png"] = "raw"
    images_per_shard: int = Field(12, ge=1)
    rows_per_group: int = Field(16, ge=1)
    workers: int = Field(0, ge=0, description="0 = all cores")
    on_bad: Literal["skip", "fail"] = "skip"

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(s not in (2, 3, 4) for s in v) or len(set(v)) != len(v):
            raise ValueError(f"scales must be distinct values from 2, 3, 4; got {list(v)}")
        return tuple(sorted(v))

    @model_validator(mode="after")
    def _divisible(self) -> "PrepareParams":
        for s in self.scales:
            if self.crop_size % s or self.step % s:
                raise ValueError(f"crop_size {self.crop_size} and step {self.step} must be divisible by scale {s}")
        if self.step < 1 or self.crop_size < 1:
            raise ValueError("crop_size and step must be positive")
        return self


class LoaderParams(_Section):
    """Training batches from the shards."""

    patch_size: int = Field(64, ge=4, description="LR patch size; HR is patch_size * scale")
    batch_size: int = Field(16, ge=1)
    shuffle_buffer: int = Field(256, ge=1)
    num_workers: int = Field(0, ge=0)
    seed: int = 0


class EvalParams(_Section):
    """Benchmarks used by the evaluation stage."""

    datasets: tuple[str, ...] = ("sample-val",)
    scales: tuple[int, ...] = (4,)


class Params(_Section):
    """The whole params.yaml (sections not listed here are refused)."""

    profile: str | None = None
    prepare: PrepareParams = PrepareParams()
    loader: LoaderParams = LoaderParams()
    eval: EvalParams = EvalParams()


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def load_params(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None) -> Params:
    """Read and validate ``params.yaml`` (a missing default file means all defaults).

    ``overrides`` maps dotted keys (``"prepare.scales"``) to values applied on top of the file.
    """
    file = Path(path) if path is not None else DEFAULT_PARAMS_FILE
    data: dict[str, Any] = {}
    if file.is_file():
        try:
            data = yaml.safe_load(file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{file}: not valid YAML ({exc})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{file}: expected a mapping of sections at the top level")
    elif path is not None:
        raise ConfigError(f"{file}: parameters file not found")
    for key, value in (overrides or {}).items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return Params(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(file))) from None
