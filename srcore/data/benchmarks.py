"""Benchmark datasets (Set5, Set14, ...) as HR/LR uint8 pairs, with an on-disk LR cache.

Layout: ``<root>/<Name>/HR/*.png``. The root comes from the caller (``--data-root``), else the
``SRCORE_DATA`` environment variable, else ``./data/benchmarks``. LR images are made with the
project's MATLAB-compatible imresize and cached per (dataset, scale) under a key derived from the
HR bytes, so an edited HR set never gets stale LR. The ``embedded`` dataset is built from images
that scikit-image ships and needs no files at all. A dataset may also be given as a folder of HR
images (a path, e.g. a training run's own small validation set); caches and saved images then go
under a label made of its name and where it is, never into the folder itself.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from srcore.data.degrade import degrade
from srcore.data.image_io import decode_rgb, modcrop, read_rgb, write_png
from srcore.errors import DataError

log = logging.getLogger(__name__)

__all__ = ["DATASETS", "EMBEDDED_IMAGES", "BenchmarkImage", "BenchmarkSource", "benchmark_sources",
           "dataset_label", "embedded_hr", "iter_benchmark", "load_benchmark", "load_pair", "resolve_root"]

DATASETS = ("Set5", "Set14", "B100", "Urban100", "Manga109", "DIV2K-val")
EMBEDDED_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
EMBEDDED = "embedded"
_IMAGE_SUFFIXES = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff")
# Bumped whenever the LR generation changes, so caches built by an older version are ignored.
_LR_VERSION = "matlab-bicubic-v1"


@dataclass(frozen=True)
class BenchmarkImage:
    """One evaluation pair: modcropped HR and its bicubic LR, both HxWx3 uint8."""

    name: str
    hr: np.ndarray
    lr: np.ndarray


def resolve_root(data_root: str | os.PathLike | None = None) -> Path:
    """The benchmark root: explicit argument, then ``SRCORE_DATA``, then ``./data/benchmarks``."""
    if data_root is not None:
        return Path(data_root)
    env = os.environ.get("SRCORE_DATA")
    return Path(env) if env else Path("data/benchmarks")


def default_cache_dir() -> Path:
    env = os.environ.get("SRCORE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "srcore"


def embedded_hr() -> list[tuple[str, np.ndarray]]:
    """The embedded benchmark's HR images (colour images shipped inside scikit-image)."""
    from skimage import data as skdata

    return [(name, np.ascontiguousarray(getattr(skdata, name)()[..., :3])) for name in EMBEDDED_IMAGES]


SAMPLE_VAL = "sample-val"


def sample_dir() -> Path:
    """Where ``srcore data sample`` writes by default (``$SRCORE_SAMPLE`` overrides)."""
    return Path(os.environ.get("SRCORE_SAMPLE", "data/raw/sample"))


def _is_folder(name: str) -> bool:
    """A dataset given as a path to its HR images rather than by name."""
    return "/" in name or os.sep in name


def dataset_label(name: str) -> str:
    """``name`` as one path component, for caches and saved images: a named dataset's own name; a
    folder's last part and a hash of where it is (two folders called ``val`` do not share a cache)."""
    if not _is_folder(name):
        return name
    where = Path(name).expanduser().resolve()
    return f"{where.name}-{hashlib.sha256(str(where).encode()).hexdigest()[:8]}"


def dataset_folder(name: str, data_root: str | os.PathLike | None = None) -> Path:
    """The HR folder of a dataset: a folder given as a path, or a named one (unknown names are
    looked up as ``<root>/<name>/HR``)."""
    if name == SAMPLE_VAL:
        return sample_dir() / "val" / "HR"
    if _is_folder(name):
        return Path(name).expanduser()
    root = resolve_root(data_root)
    canonical = {d.lower(): d for d in DATASETS}.get(name.lower(), name)
    folder = root / canonical / "HR"
    if canonical not in DATASETS and not folder.is_dir():
        choices = ", ".join(DATASETS + (EMBEDDED, SAMPLE_VAL))
        raise DataError(f"unknown dataset {name!r}; choose from {choices} or put a folder {folder}")
    return folder


def _hr_files(folder: Path, name: str) -> list[Path]:
    if not folder.is_dir():
        if name == SAMPLE_VAL:
            raise DataError(f"dataset {name}: {folder} not found; run `srcore data sample` first")
        if _is_folder(name):
            raise DataError(f"dataset folder {folder} not found; give a folder of HR images (PNG)")
        raise DataError(
            f"dataset {name}: folder {folder} not found; expected <root>/{name}/HR/*.png "
            "(pass --data-root or set SRCORE_DATA)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise DataError(f"dataset {name}: no images in {folder}; expected PNG files there")
    return files


def _cached_lr(cache_dir: Path, dataset: str, scale: int, stem: str, hr: np.ndarray, key: str,
               make: Callable[[], np.ndarray]) -> np.ndarray:
    path = cache_dir / dataset_label(dataset) / f"x{scale}" / f"{stem}.{key[:20]}.png"
    if path.is_file():
        try:
            lr = read_rgb(path)
            if lr.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3):
                return lr
        except DataError:
            log.warning("ignoring unreadable cache entry %s", path)
    lr = make()
    write_png(path, lr)
    return lr


@dataclass(frozen=True)
class BenchmarkSource:
    """Where one benchmark image comes from: an HR file, or an embedded image by name. Small and
    picklable, so worker processes load their own pixels (and share the on-disk LR cache)."""

    dataset: str
    stem: str
    path: Path | None = None


def benchmark_sources(name: str, data_root: str | os.PathLike | None = None) -> list[BenchmarkSource]:
    """The images of a benchmark in a stable (sorted) order, without decoding them."""
    if name == EMBEDDED:
        return [BenchmarkSource(name, stem) for stem in EMBEDDED_IMAGES]
    return [BenchmarkSource(name, p.stem, p) for p in _hr_files(dataset_folder(name, data_root), name)]


def load_pair(source: BenchmarkSource, scale: int,
              cache_dir: str | os.PathLike | None = None) -> BenchmarkImage:
    """Decode one HR image, modcrop it, and fetch (or make and cache) its bicubic LR."""
    if scale < 1:
        raise DataError(f"scale must be a positive integer, got {scale}")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    if source.path is not None:
        raw = source.path.read_bytes()
        img = decode_rgb(raw, str(source.path))
    else:
        img = dict(embedded_hr())[source.stem]
        raw = img.tobytes() + repr(img.shape).encode()
    hr = modcrop(img, scale)
    if min(hr.shape[:2]) < scale:
        raise DataError(f"{source.path or source.stem}: image {img.shape[1]}x{img.shape[0]} is smaller than "
                        f"scale {scale}")
    key = hashlib.sha256(raw + f"|{scale}|{_LR_VERSION}".encode()).hexdigest()
    lr = _cached_lr(cache, source.dataset, scale, source.stem, hr, key, lambda: degrade(hr, scale))
    return BenchmarkImage(source.stem, hr, lr)


def iter_benchmark(name: str, scale: int, data_root: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None) -> Iterator[BenchmarkImage]:
    """Yield the benchmark's images one by one (HR modcropped, LR bicubic, cached)."""
    if scale < 1:
        raise DataError(f"scale must be a positive integer, got {scale}")
    for source in benchmark_sources(name, data_root):
        yield load_pair(source, scale, cache_dir)


def load_benchmark(name: str, scale: int, data_root: str | os.PathLike | None = None,
                   cache_dir: str | os.PathLike | None = None) -> list[BenchmarkImage]:
    """All images of a benchmark (see :func:`iter_benchmark`)."""
    return list(iter_benchmark(name, scale, data_root, cache_dir))


def count_images(name: str, data_root: str | os.PathLike | None = None) -> int:
    """Number of images in a dataset without decoding them (for progress bars)."""
    if name == EMBEDDED:
        return len(EMBEDDED_IMAGES)
    try:
        folder = dataset_folder(name, data_root)
    except DataError:
        return 0
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
