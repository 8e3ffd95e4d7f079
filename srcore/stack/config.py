"""Typed settings of the local stack: where its data lives, its ports, its credentials, its env file.

Layout under ``root`` (default ``.stack/``, git-ignored)::

    stack.json        the settings the stack was first started with (later commands reuse them)
    credentials.json  generated passwords and S3 keys (mode 0600), kept across restarts
    env               endpoints + credentials for clients (``KEY=value``); present while the stack is up
    run/*.pid         one PID file per started process
    logs/*.log        one log per service
    postgres/ seaweedfs/ prefect/ ray/   service data

Ports are ``port_base + offset`` (see ``Ports``); SeaweedFS also uses ``+10000`` for its gRPC ports.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator

from srcore.errors import SrcoreError
from srcore.io import atomic_write_text

__all__ = ["StackError", "Credentials", "Ports", "StackConfig", "read_env_file", "apply_env_file",
           "DEFAULT_ROOT", "BUCKETS", "RESULTS_URL"]

DEFAULT_ROOT = Path(".stack")
# Buckets created on the S3 endpoint: MLflow artifacts, the DVC remote, Ray checkpoints, Prefect results.
BUCKETS = ("mlflow", "dvc", "ray", "prefect")
# Where the worker's task results (the flows' caches) go, and the Prefect block that points there
# (srcore.stack.results saves it on `up`; the block holds the location only, the keys come from the env).
RESULTS_URL = f"s3://{BUCKETS[3]}/results"
_GRPC_OFFSET = 10000


class StackError(SrcoreError):
    """The stack cannot start or stop: a busy port, a missing binary, a service that did not come up."""


class Credentials(BaseModel):
    """Secrets generated on the first ``up`` and reused afterwards (the database is initialised with them)."""

    model_config = ConfigDict(extra="forbid")
    pg_user: str = "srcore"
    pg_password: str = Field(default_factory=lambda: secrets.token_hex(16))
    s3_access_key: str = Field(default_factory=lambda: "srcore" + secrets.token_hex(6))
    s3_secret_key: str = Field(default_factory=lambda: secrets.token_hex(20))


class Ports(BaseModel):
    """Every listening port of the stack, derived from one base so a test can move them all at once."""

    postgres: int
    s3: int
    weed_master: int
    weed_volume: int
    weed_filer: int
    mlflow: int
    prefect: int
    ray: int
    ray_dashboard: int

    @classmethod
    def from_base(cls, base: int) -> Ports:
        return cls(**{name: base + i for i, name in enumerate(cls.model_fields)})

    def weed_grpc(self, port: int) -> int:
        return port + _GRPC_OFFSET

    def all(self) -> dict[str, int]:
        """Every port the stack binds, gRPC included, by a readable name."""
        out = self.model_dump()
        for name in ("s3", "weed_master", "weed_volume", "weed_filer"):
            out[f"{name}_grpc"] = self.weed_grpc(out[name])
        return out


class StackConfig(BaseModel):
    """Where the stack keeps its data and which loopback addresses and ports it uses."""

    model_config = ConfigDict(extra="forbid")
    root: Path = DEFAULT_ROOT
    project_dir: Path = Field(default_factory=Path.cwd, description="checkout with prefect.yaml; SRCORE_HOME")
    host: str = "127.0.0.1"
    port_base: int = Field(20430, ge=1024, le=65535 - _GRPC_OFFSET - 16)
    ray_head_ip: str = "127.0.0.2"
    ray_worker_ip: str = "127.0.0.3"
    ray_cpus_per_node: int = Field(1, ge=1)
    work_pool: str = "srcore-process"
    prefect_ui: bool = False
    # how often the worker asks the server for runs to start; Prefect's 10 s suits a shared server,
    # a stack on loopback answers a `deployment run` sooner for a query every 2 s
    worker_query_s: float = Field(2, gt=0)
    start_timeout_s: float = Field(240, gt=0)
    # how long `up` gives a service whose process runs but does not answer (PostgreSQL in a smart
    # shutdown waiting on its clients, a wedged server) before restarting it: long enough for a busy
    # moment to pass, far shorter than a cold start's `start_timeout_s`
    answer_grace_s: float = Field(20, gt=0)

    @field_validator("root", "project_dir")
    @classmethod
    def _absolute(cls, v: Path) -> Path:
        return Path(v).expanduser().resolve()

    @property
    def ports(self) -> Ports:
        return Ports.from_base(self.port_base)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @property
    def env_file(self) -> Path:
        return self.path("env")

    # --- persistence -------------------------------------------------------------------------
    @classmethod
    def load(cls, root: Path | str = DEFAULT_ROOT, **overrides) -> StackConfig:
        """The settings saved by the first ``up`` in ``root``, else defaults (with ``overrides``)."""
        saved = Path(root).expanduser().resolve() / "stack.json"
        if saved.is_file():
            try:
                data = json.loads(saved.read_text())
            except json.JSONDecodeError as exc:
                raise StackError(f"{saved}: not valid JSON ({exc}); delete it to start over") from exc
            return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})
        return cls(root=root, **{k: v for k, v in overrides.items() if v is not None})

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path("stack.json"), self.model_dump_json(indent=2) + "\n")

    def credentials(self) -> Credentials:
        """Generated once (mode 0600) and reused: PostgreSQL was initialised with this password."""
        path = self.path("credentials.json")
        if path.is_file():
            return Credentials.model_validate_json(path.read_text())
        creds = Credentials()
        self.root.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, creds.model_dump_json(indent=2) + "\n")
        path.chmod(0o600)
        return creds

    # --- client endpoints --------------------------------------------------------------------
    def pg_uri(self, database: str, driver: str = "postgresql") -> str:
        c = self.credentials()
        return f"{driver}://{c.pg_user}:{c.pg_password}@{self.host}:{self.ports.postgres}/{database}"

    @property
    def s3_endpoint(self) -> str:
        return f"http://{self.host}:{self.ports.s3}"

    @property
    def ray_address(self) -> str:
        return f"{self.ray_head_ip}:{self.ports.ray}"

    def client_env(self) -> dict[str, str]:
        """What a client (srcore, the flows, dvc, the prefect CLI) needs to use the stack."""
        # imported here: ``python -m srcore.stack.results`` must not find itself imported by the package
        from srcore.stack.results import BLOCK_SLUG, SETTING

        c = self.credentials()
        return {
            "MLFLOW_TRACKING_URI": f"http://{self.host}:{self.ports.mlflow}",
            "MLFLOW_S3_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "AWS_ACCESS_KEY_ID": c.s3_access_key,
            "AWS_SECRET_ACCESS_KEY": c.s3_secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "PREFECT_API_URL": f"http://{self.host}:{self.ports.prefect}/api",
            "RAY_ADDRESS": self.ray_address,
            "RAY_AUTH_MODE": "token",
            "SRCORE_HOME": str(self.project_dir),
            "SRCORE_STACK_ENV": str(self.env_file),
            "SRCORE_S3_BUCKETS": ",".join(BUCKETS),
            "DVC_NO_ANALYTICS": "1",
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "RAY_USAGE_STATS_ENABLED": "0",
            # Task results of every flow run go to the bucket, so a cache survives the worker's disk.
            SETTING: BLOCK_SLUG,
        }

    def write_env_file(self) -> Path:
        lines = [f"{k}={v}" for k, v in self.client_env().items()]
        atomic_write_text(self.env_file, "# srcore stack endpoints (set -a; . this file; set +a)\n"
                          + "\n".join(lines) + "\n")
        self.env_file.chmod(0o600)
        return self.env_file


def read_env_file(path: str | os.PathLike) -> dict[str, str]:
    """``KEY=value`` lines of a stack env file (comments and blank lines ignored)."""
    path = Path(path)
    if not path.is_file():
        raise StackError(f"{path}: stack env file not found; start the stack with `srcore stack up`")
    out: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def apply_env_file(path: str | os.PathLike, environ: dict[str, str] | None = None) -> dict[str, str]:
    """Put the stack's variables into ``environ`` (default ``os.environ``) without overriding set ones."""
    environ = os.environ if environ is None else environ
    applied = {k: v for k, v in read_env_file(path).items() if k not in environ}
    environ.update(applied)
    return applied
