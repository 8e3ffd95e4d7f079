"""params.yaml -> validated, typed settings.

Every stage reads its section from one file; unknown keys and bad values are refused with the
file, the dotted field path and what is wrong, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import os
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from srcore.errors import ConfigError

__all__ = ["DEFAULT_PARAMS_FILE", "SCALES", "STAGES", "DistillParams", "EvalParams", "LoaderParams",
           "Params", "PrepareParams", "RayParams", "Stage", "TrainParams", "check_scale", "load_params",
           "stage_section"]

DEFAULT_PARAMS_FILE = Path("params.yaml")

SCALES = (2, 3, 4)


def check_scale(v: int) -> int:
    """The one rule for upscaling factors, shared by model configs and params.yaml."""
    if v not in SCALES:
        raise ValueError(f"scale {v} is not supported; use 2, 3 or 4")
    return v


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PrepareParams(_Section):
    """Sub-image extraction into Parquet shards (BasicSR's DF2K convention by default)."""

    input: str | list[str] = Field(
        "data/raw/sample/train",
        description="raw HR folder or s3://bucket/prefix, or a list of them (image names unique across all)")
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
    executor: Literal["local", "ray"] = Field(
        "local", description="local: a process pool on this machine; ray: one Ray task per shard")
    address: str | None = Field(
        None, description="Ray cluster HOST:PORT for executor ray; None starts a local Ray")

    @field_validator("scales")
    @classmethod
    def _scales(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(s not in (2, 3, 4) for s in v) or len(set(v)) != len(v):
            raise ValueError(f"scales must be distinct values from 2, 3, 4; got {list(v)}")
        return tuple(sorted(v))

    @field_validator("input")
    @classmethod
    def _input(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("input: list at least one folder or s3:// prefix")
        if isinstance(v, list) and len(set(v)) != len(v):
            raise ValueError(f"input lists a location twice: {sorted({x for x in v if v.count(x) > 1})}")
        return v

    @property
    def inputs(self) -> list[str]:
        """``input`` as a list, one location or several."""
        return [self.input] if isinstance(self.input, str) else list(self.input)

    @model_validator(mode="after")
    def _divisible(self) -> PrepareParams:
        for s in self.scales:
            if self.crop_size % s or self.step % s:
                raise ValueError(f"crop_size {self.crop_size} and step {self.step} must be divisible "
                                 f"by scale {s}")
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
    backend: Literal["torch", "ray_data"] = Field(
        "torch", description="torch: per-rank IterableDataset over the shards; "
                             "ray_data: ray.data.read_parquet split by Ray Train (get_dataset_shard)")
    source: Literal["prepared", "dvc"] = Field(
        "prepared", description="prepared: read prepare.out as it is (a folder or s3:// prefix); dvc: read "
                                "the version of prepare.out that dvc.lock pins from the DVC remote (dvc push "
                                "first; no machine needs a local copy)")


class RayParams(_Section):
    """Where and how wide training runs (Ray Train)."""

    address: str | None = Field(None, description="Ray cluster address; None starts a local Ray")
    num_workers: int = Field(1, ge=1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    gpus_per_worker: float = Field(0.0, ge=0)
    placement_strategy: Literal["PACK", "SPREAD"] = Field(
        "PACK", description="PACK fills a node before the next (ranks share fast local links); SPREAD puts "
        "ranks on different nodes where it can, so a lost node takes fewer of them (Ray falls back to "
        "packing when nodes are short, e.g. on the nodes left after one was lost)")
    storage_path: str = "runs"
    max_failures: int = Field(1, ge=-1)
    num_to_keep: int = Field(2, ge=1)
    score_attribute: str | None = None
    upload_retry_s: float = Field(
        600.0, gt=0, description="seconds a checkpoint upload is retried while the store cannot be "
        "reached, training going on meanwhile; then the run stops, the newest checkpoint on rank 0's disk")


# Settings of a stage that say where and how often it checkpoints and how long it may take to stop,
# not what it trains: a run's identity (its cached result, a local checkpoint's match) leaves them out.
RUN_ONLY_FIELDS = frozenset({"ray", "checkpoint_every_s", "stop_grace_s"})


class TrainParams(_Section):
    """One training stage: the model, the optimisation recipe, validation and checkpoints."""

    name: str = "teacher"
    model: str = "dvmsr_teacher"
    model_overrides: dict[str, Any] = Field(default_factory=dict)
    init: str | None = Field(None, description="weights to start from (any --weights spec: checkpoint, run "
                             "folder, official file, s3:// URI, models:/name@alias); null = random")
    scale: int = 4
    steps: int = Field(1000, ge=1)
    lr: float = Field(2e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.99)
    milestones: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)
    gamma: float = Field(0.5, gt=0, le=1, description="learning-rate factor at each milestone, in (0, 1]")
    loss: Literal["l1", "charbonnier"] = "l1"
    grad_clip: float | None = None
    ema_decay: float | None = 0.999
    amp: Literal["auto", "bf16", "off"] = Field(
        "auto", description="bf16 autocast: auto = on CUDA only (most CPUs run bf16 slower than fp32), "
                            "bf16 = on any device, off = fp32 throughout; true/false mean auto/off")
    compile: bool = False
    channels_last: bool = False
    val_every: int = Field(200, ge=1)
    checkpoint_every_s: float | None = Field(
        600.0, gt=0, description="seconds between checkpoints taken without validation, beside val_every; "
        "null = at validations only")
    stop_grace_s: float = Field(
        30.0, gt=0, description="on SIGTERM/SIGINT, seconds the ranks get to checkpoint their current step "
        "and stop before the run is aborted")
    log_every: int = Field(20, ge=1, description="steps between live metric points (MLflow, rank 0)")
    val_dataset: str = Field(
        "sample-val", description="what validation scores: a benchmark name, embedded, sample-val, or a "
        "folder of HR images (a path; every node that runs rank 0 must be able to read it)")
    seed: int = 0
    ray: RayParams = RayParams()

    @field_validator("amp", mode="before")
    @classmethod
    def _amp(cls, v: Any) -> Any:
        return {True: "auto", False: "off"}.get(v, v) if isinstance(v, bool) else v

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not 0 < f < 1 for f in v) or any(b <= a for a, b in pairwise(v)):
            raise ValueError(f"milestones are increasing fractions of the run in (0, 1), got {list(v)}")
        return v

    @field_validator("scale")
    @classmethod
    def _scale(cls, v: int) -> int:
        return check_scale(v)


class DistillParams(TrainParams):
    """A student trained against a frozen teacher; the loss terms are weighted sums."""

    name: str = "student"
    model: str = "dvmsr"
    teacher: str = "runs/teacher/model.pth"
    teacher_model: str | None = Field(None, description="preset, needed only for official weight files")
    w_rec: float = Field(1.0, ge=0)
    w_out: float = Field(0.0, ge=0)
    w_feat: float = Field(1.0, ge=0)
    w_depth: float = Field(0.0, ge=0)
    depth_weights: tuple[float, ...] | None = None
    depth_map: tuple[int, ...] | Literal["proportional"] = "proportional"
    feat_norm: Literal["none", "teacher"] = Field(
        "none", description="scale of the feature terms: none (plain L1, the papers') or teacher (L1 divided "
        "by the teacher feature's mean magnitude, for teachers whose features live on another scale)")

    @property
    def distills(self) -> bool:
        """Whether any distillation term is on; with all three at 0 the student trains plainly (the
        no-distillation baseline) and the teacher is not even loaded."""
        return bool(self.w_out or self.w_feat or self.w_depth)


class EvalParams(_Section):
    """Benchmarks used by the evaluation stage."""

    datasets: tuple[str, ...] = ("sample-val",)
    scales: tuple[int, ...] = (4,)
    efficiency_size: int = Field(256, ge=16, description="side of the square input for efficiency")
    efficiency_threads: int = Field(1, ge=1, description="CPU threads the latency is measured with")


# The two training stages: the teacher trains alone, ``distill`` trains the student from it.
Stage = Literal["teacher", "distill"]
STAGES: tuple[Stage, ...] = ("teacher", "distill")


def stage_section(stage: Stage) -> str:
    """The params.yaml section a stage reads (``student`` for ``distill``), as messages name it."""
    return "student" if stage == "distill" else "teacher"


class Params(_Section):
    """The whole params.yaml (sections not listed here are refused)."""

    profile: str | None = None
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict)
    prepare: PrepareParams = PrepareParams()
    loader: LoaderParams = LoaderParams()
    teacher: TrainParams = TrainParams()
    student: DistillParams = DistillParams()
    eval: EvalParams = EvalParams()

    def stage(self, stage: Stage) -> TrainParams:
        """The settings ``stage`` trains with (``teacher``, or the student's for ``distill``)."""
        if stage not in STAGES:
            raise ConfigError(f"unknown stage {stage!r}; use teacher or distill")
        return self.student if stage == "distill" else self.teacher


def _format_errors(exc: ValidationError, source: str) -> str:
    lines = [f"{source}: invalid parameters"]
    for e in exc.errors():
        where = ".".join(str(p) for p in e["loc"])
        lines.append(f"  {where}: {e['msg']}")
    return "\n".join(lines)


def load_params(path: str | os.PathLike | None = None, overrides: dict[str, Any] | None = None,
                profile: str | None = None) -> Params:
    """Read and validate ``params.yaml``; the one merge of file, profile and overrides that the CLI
    and the flows share.

    A missing default file (``None`` or ``params.yaml``) means all defaults; another named file must
    exist. ``profile`` selects an entry of ``profiles:``; ``overrides`` maps dotted keys
    (``"prepare.scales"``) to values applied last.
    """
    file = Path(path) if path is not None else DEFAULT_PARAMS_FILE
    if file == DEFAULT_PARAMS_FILE and not file.exists():
        path = None
    overrides = dict(overrides or {})
    if profile:
        overrides["profile"] = profile
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
    profile = overrides.pop("profile", data.get("profile"))
    if profile is not None:
        profiles = data.get("profiles") or {}
        if profile not in profiles:
            raise ConfigError(f"{file}: profile {profile!r} is not defined under 'profiles' "
                              f"(defined: {', '.join(profiles) or 'none'})")
        data["profile"] = profile
        overrides = {**profiles[profile], **overrides}
    for key, value in overrides.items():
        node = data
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p, {}), dict):
                raise ConfigError(f"{file}: cannot override {key}: {p} is not a section")
            node = node.setdefault(p, {})
        node[leaf] = value
    try:
        return Params(**data)
    except ValidationError as exc:
        raise ConfigError(_format_errors(exc, str(file))) from None
