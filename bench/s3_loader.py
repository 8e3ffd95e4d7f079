"""Training data from an object store: SeaweedFS S3 on loopback (the stack's), against the local disk.

1. Range-read throughput of the S3 clients a storage layer could use, on the reads training makes
   (one row group's column chunks: ``--range-kb`` at random offsets of a shard): pyarrow.fs (what
   ``srcore.storage`` uses), boto3 (``get_object`` with a Range), and s3fs when it is installed.
2. The torch loader (``ShardPairs``, one process, one compute thread) over the same shards from a
   local folder and from ``s3://``, LR 64 / HR 256 crops (x4, 480 px HR sub-images, the DF2K recipe):
   samples per second of wall time and per CPU second of the loader (what a training node spends
   per sample; target >= 0.8 of local), and the CPU the S3 server spent, which on loopback comes
   out of the same cores.

Run: python bench/s3_loader.py [--images 6] [--epochs 3] [--range-kb 256]
"""

from __future__ import annotations

import argparse
import os
import random
import socket
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import torch
from common import report
from prepare import _synthetic

from srcore.config import PrepareParams
from srcore.data.loaders import ShardPairs, shard_set
from srcore.data.prepare import prepare
from srcore.data.shard_job import one_thread_each
from srcore.storage import copy_file, filesystem


def _free_base() -> int:
    for base in range(41000, 60000, 53):
        ports = [base + i for i in range(16)] + [base + 10000 + i for i in range(16)]
        ok = True
        for p in ports:
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise SystemExit("no free block of loopback ports")


def _range_reads(uri: str, size: int, range_bytes: int, reads: int) -> dict[str, float]:
    """MB/s of ``reads`` random ranges of ``range_bytes`` from one object, per client."""
    offsets = [random.Random(k).randrange(0, max(1, size - range_bytes)) for k in range(reads)]
    bucket, key = uri[len("s3://"):].split("/", 1)
    out: dict[str, float] = {}

    fs, path = filesystem(uri)
    f = fs.open_input_file(path)
    t0 = time.perf_counter()
    for off in offsets:
        f.read_at(range_bytes, off)
    out["pyarrow.fs"] = reads * range_bytes / (time.perf_counter() - t0) / 1e6

    import boto3

    client = boto3.client("s3")
    t0 = time.perf_counter()
    for off in offsets:
        client.get_object(Bucket=bucket, Key=key, Range=f"bytes={off}-{off + range_bytes - 1}")["Body"].read()
    out["boto3"] = reads * range_bytes / (time.perf_counter() - t0) / 1e6
    try:
        import s3fs
    except ImportError:
        return out
    sfs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    t0 = time.perf_counter()
    with sfs.open(f"{bucket}/{key}", "rb", block_size=range_bytes) as fh:
        for off in offsets:
            fh.seek(off)
            fh.read(range_bytes)
    out["s3fs"] = reads * range_bytes / (time.perf_counter() - t0) / 1e6
    return out


def _loader_rate(source: str, epochs: int, server: psutil.Process | None = None
                 ) -> tuple[float, float, float]:
    """One rank reading every row of ``epochs`` epochs (one process; torch and numba on one thread):
    samples per second of wall time, per CPU second of this process (its read-ahead threads
    included), and the S3 server's CPU seconds per 1,000 samples (it shares this machine's cores)."""
    ds = ShardPairs(shard_set(source, 4), 4, 64, seed=0, shuffle_buffer=64)
    n, t0, c0 = 0, time.perf_counter(), time.process_time()
    s0 = sum(server.cpu_times()[:2]) if server else 0.0
    for epoch in range(epochs):
        ds.set_epoch(epoch)
        for _ in ds:
            n += 1
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    served = (sum(server.cpu_times()[:2]) - s0) if server else 0.0
    return n / wall, n / cpu, 1000 * served / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=6)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--range-kb", type=int, default=256)
    ap.add_argument("--reads", type=int, default=200)
    args = ap.parse_args()
    torch.set_num_threads(1)
    one_thread_each()
    from srcore.stack.config import StackConfig
    from srcore.stack.services import SeaweedFS

    with tempfile.TemporaryDirectory(prefix="srb", dir="/tmp") as tmp:
        root = Path(tmp)
        cfg = StackConfig(root=root / "stack", project_dir=Path.cwd(), port_base=_free_base())
        os.environ.update({k: v for k, v in cfg.client_env().items() if k.startswith("AWS_")})
        weed = SeaweedFS(cfg)
        weed.start()
        try:
            weed.ready()
            _synthetic(root / "raw", args.images)
            local = root / "patches"
            prepare(PrepareParams(input=str(root / "raw"), out=str(local), scales=(4,), crop_size=480,
                                  step=240, images_per_shard=2, rows_per_group=16, workers=2))
            uri = "s3://dvc/bench-patches"
            for p in sorted(local.rglob("*")):
                if p.is_file():
                    copy_file(p, f"{uri}/{p.relative_to(local).as_posix()}")
            shard = sorted(local.glob("x4/*.parquet"))[0]
            reads = _range_reads(f"{uri}/x4/{shard.name}", shard.stat().st_size, args.range_kb * 1024,
                                 args.reads)
            base = reads["boto3"]
            rows = [{"table": "range reads", "what": f"{name}, {args.range_kb} KB ranges", "value": mb,
                     "unit": "MB/s", "ratio": mb / base} for name, mb in reads.items()]
            _loader_rate(str(local), 1)  # warm the page cache and the imports
            server = psutil.Process(weed.pids()[0])
            local_runs = [_loader_rate(str(local), args.epochs) for _ in range(3)]
            s3_runs = [_loader_rate(uri, args.epochs, server) for _ in range(3)]
            for k, (what, unit) in enumerate((("wall", "samples/s"), ("loader CPU", "samples/CPU-s"))):
                lo = statistics.median(r[k] for r in local_runs)
                s3v = statistics.median(r[k] for r in s3_runs)
                table = f"torch loader, {what}"
                rows += [{"table": table, "what": "local folder", "value": lo, "unit": unit, "ratio": 1.0},
                         {"table": table, "what": "s3:// (SeaweedFS, loopback)", "value": s3v, "unit": unit,
                          "ratio": s3v / lo}]
            rows.append({"table": "S3 server", "what": "SeaweedFS CPU while serving",
                         "value": statistics.median(r[2] for r in s3_runs), "unit": "CPU-s/1k samples",
                         "ratio": float("nan")})
        finally:
            weed.stop()
    report("s3_loader", rows, "training data from S3 (SeaweedFS, loopback) vs local disk, LR 64 / HR 256 x4")


if __name__ == "__main__":
    main()
