"""Dataset loading for the Equilibrium Propagation simulator.

What: loaders for three image-classification datasets in their *standard
distribution formats*, returned as a :class:`Dataset` of torch tensors:

* ``"digits"``  - scikit-learn's 8x8 handwritten digits (shipped inside
  scikit-learn, no download, no data directory needed).
* ``"mnist"``   - the four ``*-idx?-ubyte.gz`` files of LeCun et al.
* ``"cifar10"`` - CIFAR-10, either the binary version
  (``cifar-10-batches-bin/``) or the python pickle version
  (``cifar-10-batches-py/``).

Why: the simulator needs small, exactly reproducible inputs. Files are
parsed directly (no torchvision, no network), verified against the md5 sums
published by the dataset authors, and every problem (missing file, wrong
checksum, truncated archive, inconsistent header) raises a
:class:`DatasetError` that names the file, says what is wrong and what to do.

Shapes: ``x_*`` is float32 of shape ``(N, *input_shape)`` scaled to [0, 1]
(pixel / 255, digits / 16); ``y_*`` is int64 of shape ``(N,)``.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import math
import os
import pickle
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "DATASET_NAMES",
    "ENV_VAR",
    "Dataset",
    "DatasetError",
    "iterate_batches",
    "load_dataset",
    "resolve_data_dir",
]

#: Environment variable that names the data directory.
ENV_VAR = "NEUROMORPH_DATA"

#: Names accepted by :func:`load_dataset`.
DATASET_NAMES: tuple[str, ...] = ("digits", "mnist", "cifar10")

_CIFAR_FORMATS = ("auto", "bin", "py")

MNIST_DIR = "mnist"
CIFAR_BIN_DIR = "cifar-10-batches-bin"
CIFAR_PY_DIR = "cifar-10-batches-py"

_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
_CIFAR_BIN_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_BIN_TEST = "test_batch.bin"
_CIFAR_PY_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_PY_TEST = "test_batch"

#: Published md5 sums, keyed by path relative to the data directory (posix).
#: MNIST and CIFAR-10 binary: as published by the dataset authors (see
#: ``shared/data/README.md``). CIFAR-10 python: torchvision's list.
KNOWN_MD5: dict[str, str] = {
    "mnist/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "mnist/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "mnist/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "mnist/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "cifar-10-batches-bin/data_batch_1.bin": "5dd7e06a14cb22eb9f671a540d1b7c25",
    "cifar-10-batches-bin/data_batch_2.bin": "5ea93a67294ea407fff1d09f752e9692",
    "cifar-10-batches-bin/data_batch_3.bin": "942cd6a4bcdd0dd3c604fbe906cb4421",
    "cifar-10-batches-bin/data_batch_4.bin": "ae636b3ba5c66a11e91e8cb52e771fcb",
    "cifar-10-batches-bin/data_batch_5.bin": "53f37980c15c3d472c316c40844f3f0d",
    "cifar-10-batches-bin/test_batch.bin": "803d5f7f4d78ea53de84dbe85f74fb6d",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
}

_DOWNLOAD_HINT = {
    MNIST_DIR: "download the four idx .gz files of MNIST (e.g. from "
    "https://ossci-datasets.s3.amazonaws.com/mnist/) into {dir}",
    CIFAR_BIN_DIR: "download and unpack cifar-10-binary.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html so that {dir} exists",
    CIFAR_PY_DIR: "download and unpack cifar-10-python.tar.gz from "
    "https://www.cs.toronto.edu/~kriz/cifar.html so that {dir} exists",
}

_CIFAR_PIXELS = 3 * 32 * 32
_CIFAR_RECORD = 1 + _CIFAR_PIXELS
_MD5_CHUNK = 1 << 20

# (resolved path, size, mtime_ns) -> md5 hexdigest. Lets repeated loads skip
# re-hashing files that have not changed.
_md5_cache: dict[tuple[str, int, int], str] = {}
_md5_lock = threading.Lock()


class DatasetError(ValueError):
    """Any problem with a dataset: unknown name, missing/corrupt file, bad
    argument. The message names the file or path, what is wrong and what to do."""


# --------------------------------------------------------------------------- #
# Dataset container
# --------------------------------------------------------------------------- #


@dataclass(frozen=True, eq=False)
class Dataset:
    """A train/test split held as torch tensors.

    Attributes:
        name: dataset name (``"digits"``, ``"mnist"``, ``"cifar10"``).
        x_train: float32, shape ``(N_train, *input_shape)``, values in [0, 1].
        y_train: int64, shape ``(N_train,)``, values in ``[0, n_classes)``.
        x_test: float32, shape ``(N_test, *input_shape)``, values in [0, 1].
        y_test: int64, shape ``(N_test,)``.
        n_classes: number of classes.
        input_shape: per-example shape, channels first, e.g. ``(1, 28, 28)``.

    ``eq=False``: element-wise tensor comparison has no single truth value,
    so datasets compare (and hash) by identity.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        shape = tuple(int(s) for s in self.input_shape)
        object.__setattr__(self, "input_shape", shape)
        if self.n_classes < 1:
            raise DatasetError(f"Dataset {self.name!r}: n_classes must be >= 1, got {self.n_classes}")
        for split, x, y in (("train", self.x_train, self.y_train), ("test", self.x_test, self.y_test)):
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
                raise DatasetError(f"Dataset {self.name!r}: x_{split}/y_{split} must be torch tensors")
            if x.dtype != torch.float32 or tuple(x.shape[1:]) != shape:
                raise DatasetError(
                    f"Dataset {self.name!r}: x_{split} must be float32 of shape (N, *{shape}), "
                    f"got {x.dtype} {tuple(x.shape)}"
                )
            if y.dtype != torch.int64 or y.ndim != 1 or y.shape[0] != x.shape[0]:
                raise DatasetError(
                    f"Dataset {self.name!r}: y_{split} must be int64 of shape ({x.shape[0]},), "
                    f"got {y.dtype} {tuple(y.shape)}"
                )

    @property
    def n_features(self) -> int:
        """Number of input features per example, ``prod(input_shape)``."""
        return math.prod(self.input_shape)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={tuple(self.x_train.shape)}, "
            f"test={tuple(self.x_test.shape)}, n_classes={self.n_classes}, "
            f"input_shape={self.input_shape})"
        )


# --------------------------------------------------------------------------- #
# Data directory
# --------------------------------------------------------------------------- #


def _default_data_dir() -> Path:
    """``<repo root>/../shared/data``, repo root = parent of the package dir."""
    return Path(__file__).resolve().parent.parent.parent / "shared" / "data"


def resolve_data_dir(data_dir: str | os.PathLike[str] | None) -> Path:
    """Find the directory that holds the dataset folders.

    Order: the explicit ``data_dir`` argument, else the ``NEUROMORPH_DATA``
    environment variable, else ``<repo root>/../shared/data`` if it exists.

    Raises:
        DatasetError: an explicitly given directory does not exist, or no
            directory was given and the default does not exist.
    """
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        if not path.is_dir():
            raise DatasetError(
                f"data directory {path} (given as data_dir argument) does not exist or is not a directory; "
                "pass the folder that contains mnist/ or cifar-10-batches-bin/"
            )
        return path
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise DatasetError(
                f"data directory {path} (from environment variable {ENV_VAR}) does not exist or is not "
                f"a directory; fix or unset {ENV_VAR}"
            )
        return path
    default = _default_data_dir()
    if default.is_dir():
        return default
    raise DatasetError(
        "no data directory found. Give it in one of three ways: (1) the data_dir argument, "
        f"(2) the environment variable {ENV_VAR}, or (3) place the data at {default} "
        "(../shared/data relative to the repository root)"
    )


# --------------------------------------------------------------------------- #
# Checksums
# --------------------------------------------------------------------------- #


def _compute_md5(path: Path) -> str:
    """md5 hexdigest of a file, read in 1 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_MD5_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _file_md5(path: Path) -> str:
    """md5 of ``path``, cached per (resolved path, size, mtime_ns)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _md5_lock:
        cached = _md5_cache.get(key)
    if cached is not None:
        return cached
    digest = _compute_md5(path)
    with _md5_lock:
        _md5_cache[key] = digest
    return digest


def _verify_md5(path: Path, relname: str) -> None:
    """Compare ``path`` with the published md5 of ``relname``; raise on mismatch."""
    expected = KNOWN_MD5[relname]
    actual = _file_md5(path)
    if actual != expected:
        raise DatasetError(
            f"md5 mismatch for {path}: expected {expected} (published sum of {relname}), got {actual}. "
            "The file is corrupt, truncated or a different version; download it again "
            "(or pass verify=False to skip the check, e.g. for a hand-made subset)"
        )


def _require_file(directory: Path, filename: str, subdir: str) -> Path:
    """Return ``directory/filename`` or raise naming the missing path."""
    path = directory / filename
    if not path.is_file():
        hint = _DOWNLOAD_HINT[subdir].format(dir=directory)
        raise DatasetError(f"missing file {path} (searched directory {directory}); {hint}")
    return path


def _read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc}") from exc


# --------------------------------------------------------------------------- #
# Helpers: conversion, subsetting
# --------------------------------------------------------------------------- #


def _check_count(arg: str, n: int | None, available: int) -> int:
    """Validate an ``n_train``/``n_test`` argument; return the count to keep."""
    if n is None:
        return available
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise DatasetError(f"{arg} must be an int or None, got {type(n).__name__}")
    if not 0 < n <= available:
        raise DatasetError(f"{arg}={n} is out of range: must satisfy 0 < {arg} <= {available} (examples available)")
    return int(n)


def _to_float(arr: np.ndarray, scale: float) -> torch.Tensor:
    """uint8/float array -> float32 tensor divided by ``scale`` (one allocation)."""
    out = np.empty(arr.shape, dtype=np.float32)
    np.divide(arr, np.float32(scale), out=out, dtype=np.float32)
    return torch.from_numpy(out)


def _to_labels(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.asarray(arr, dtype=np.int64).copy())


def _check_labels(labels: np.ndarray, n_classes: int, path: Path | str) -> None:
    if labels.size and int(labels.max()) >= n_classes:
        raise DatasetError(
            f"{path}: label {int(labels.max())} is out of range [0, {n_classes}); the file is corrupt, "
            "download it again"
        )


# --------------------------------------------------------------------------- #
# digits
# --------------------------------------------------------------------------- #


def _load_digits(n_train: int | None, n_test: int | None) -> Dataset:
    """sklearn digits: 1797 8x8 images, values 0..16; fixed stratified 1/6 test split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images)  # (1797, 8, 8) float64 with integer values 0..16
    labels = np.asarray(bunch.target)
    x_tr, x_te, y_tr, y_te = train_test_split(images, labels, test_size=1 / 6, random_state=0, stratify=labels)
    k_tr = _check_count("n_train", n_train, len(y_tr))
    k_te = _check_count("n_test", n_test, len(y_te))
    return Dataset(
        name="digits",
        x_train=_to_float(x_tr[:k_tr, None], 16.0),
        y_train=_to_labels(y_tr[:k_tr]),
        x_test=_to_float(x_te[:k_te, None], 16.0),
        y_test=_to_labels(y_te[:k_te]),
        n_classes=10,
        input_shape=(1, 8, 8),
    )


# --------------------------------------------------------------------------- #
# MNIST (idx format)
# --------------------------------------------------------------------------- #

_IDX_MAGIC_IMAGES = 2051  # 0x00000803: unsigned byte, 3 dims
_IDX_MAGIC_LABELS = 2049  # 0x00000801: unsigned byte, 1 dim


def _read_idx_gz(path: Path, expected_magic: int) -> np.ndarray:
    """Parse a gzip-compressed idx file; return a uint8 array of the header's dims.

    idx header: 4-byte big-endian magic (0x08 = ubyte in byte 3, ndim in byte 4),
    then ndim big-endian uint32 dims, then prod(dims) bytes of data.
    """
    raw = _read_file(path)
    try:
        data = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DatasetError(
            f"{path} is not a valid gzip file or is truncated ({type(exc).__name__}: {exc}); download it again"
        ) from exc
    if len(data) < 4:
        raise DatasetError(f"{path}: idx data is only {len(data)} bytes, too short for a header; download it again")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        kind = "images" if expected_magic == _IDX_MAGIC_IMAGES else "labels"
        raise DatasetError(
            f"{path}: idx magic number is {magic}, expected {expected_magic} (idx {kind} file); "
            "wrong or corrupt file, download it again"
        )
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(f"{path}: idx header truncated ({len(data)} bytes < {header}); download it again")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims)
    if len(data) - header != expected:
        raise DatasetError(
            f"{path}: size does not match the idx header: header dims {dims} need {expected} data bytes, "
            f"file has {len(data) - header}; the file is truncated or corrupt, download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _load_mnist(root: Path, verify: bool, n_train: int | None, n_test: int | None) -> Dataset:
    directory = root / MNIST_DIR
    paths = {key: _require_file(directory, fname, MNIST_DIR) for key, fname in _MNIST_FILES.items()}
    if verify:
        for key, path in paths.items():
            _verify_md5(path, f"{MNIST_DIR}/{_MNIST_FILES[key]}")

    splits = {}
    for split, count_arg, n in (("train", "n_train", n_train), ("test", "n_test", n_test)):
        img_path, lab_path = paths[f"{split}_images"], paths[f"{split}_labels"]
        images = _read_idx_gz(img_path, _IDX_MAGIC_IMAGES)
        labels = _read_idx_gz(lab_path, _IDX_MAGIC_LABELS)
        if images.shape[1:] != (28, 28):
            raise DatasetError(f"{img_path}: images are {images.shape[1:]}, expected 28x28; wrong file")
        if images.shape[0] != labels.shape[0]:
            raise DatasetError(
                f"{img_path} has {images.shape[0]} images but {lab_path} has {labels.shape[0]} labels; "
                "the files do not belong together, download them again"
            )
        _check_labels(labels, 10, lab_path)
        k = _check_count(count_arg, n, labels.shape[0])
        splits[split] = (_to_float(images[:k, None], 255.0), _to_labels(labels[:k]))

    return Dataset(
        name="mnist",
        x_train=splits["train"][0],
        y_train=splits["train"][1],
        x_test=splits["test"][0],
        y_test=splits["test"][1],
        n_classes=10,
        input_shape=(1, 28, 28),
    )


# --------------------------------------------------------------------------- #
# CIFAR-10
# --------------------------------------------------------------------------- #


def _read_cifar_bin(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One binary batch: records of 1 label byte + 3072 pixel bytes (R, G, B planes)."""
    raw = _read_file(path)
    if len(raw) == 0 or len(raw) % _CIFAR_RECORD:
        raise DatasetError(
            f"{path}: size {len(raw)} bytes is not a positive multiple of the {_CIFAR_RECORD}-byte record "
            "(1 label + 3072 pixels); the file is truncated or corrupt, download it again"
        )
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, _CIFAR_RECORD)
    labels = records[:, 0]
    _check_labels(labels, 10, path)
    return records[:, 1:], labels


_PICKLE_ALLOWED = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy.core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that only builds plain containers and numpy uint8 arrays.

    The CIFAR-10 python batches are pickles; a general unpickler would run
    arbitrary code from a tampered file, this one refuses every other global.
    """

    def find_class(self, module: str, name: str):  # type: ignore[override]
        if (module, name) not in _PICKLE_ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")
        module = module.replace("numpy.core.", "numpy._core.")
        return super().find_class(module, name)


def _read_cifar_py(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One python batch: pickled dict with b'data' uint8 (N, 3072) and b'labels'."""
    raw = _read_file(path)
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:  # any unpickling failure means a corrupt/foreign file
        raise DatasetError(
            f"{path}: cannot unpickle CIFAR-10 batch ({type(exc).__name__}: {exc}); download it again"
        ) from exc
    if not isinstance(obj, dict):
        raise DatasetError(f"{path}: expected a pickled dict, got {type(obj).__name__}; wrong file")

    def get(key: str):
        for k in (key.encode(), key):
            if k in obj:
                return obj[k]
        raise DatasetError(f"{path}: pickled dict has no {key!r} entry; wrong or corrupt file")

    data = np.asarray(get("data"))
    labels = np.asarray(get("labels"))
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != _CIFAR_PIXELS:
        raise DatasetError(
            f"{path}: 'data' must be uint8 of shape (N, {_CIFAR_PIXELS}), got {data.dtype} {data.shape}; "
            "wrong or corrupt file"
        )
    if labels.ndim != 1 or labels.shape[0] != data.shape[0] or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetError(
            f"{path}: 'labels' must be {data.shape[0]} integers, got {labels.dtype} {labels.shape}; corrupt file"
        )
    if labels.size and int(labels.min()) < 0:
        raise DatasetError(f"{path}: negative label {int(labels.min())}; corrupt file")
    _check_labels(labels, 10, path)
    return data, labels


def _pick_cifar_format(root: Path, fmt: str) -> str:
    if fmt not in _CIFAR_FORMATS:
        raise DatasetError(f"format must be one of {_CIFAR_FORMATS}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    if (root / CIFAR_BIN_DIR).is_dir():
        return "bin"
    if (root / CIFAR_PY_DIR).is_dir():
        return "py"
    raise DatasetError(
        f"CIFAR-10 not found: neither {root / CIFAR_BIN_DIR} nor {root / CIFAR_PY_DIR} exists; "
        + _DOWNLOAD_HINT[CIFAR_BIN_DIR].format(dir=root / CIFAR_BIN_DIR)
    )


def _load_cifar10(root: Path, verify: bool, n_train: int | None, n_test: int | None, fmt: str) -> Dataset:
    fmt = _pick_cifar_format(root, fmt)
    subdir, train_names, test_name, reader = (
        (CIFAR_BIN_DIR, _CIFAR_BIN_TRAIN, _CIFAR_BIN_TEST, _read_cifar_bin)
        if fmt == "bin"
        else (CIFAR_PY_DIR, _CIFAR_PY_TRAIN, _CIFAR_PY_TEST, _read_cifar_py)
    )
    directory = root / subdir
    train_paths = [_require_file(directory, n, subdir) for n in train_names]
    test_path = _require_file(directory, test_name, subdir)
    if verify:
        for p in (*train_paths, test_path):
            _verify_md5(p, f"{subdir}/{p.name}")

    def collect(paths: list[Path], count_arg: str, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        parts = [reader(p) for p in paths]
        available = sum(len(lab) for _, lab in parts)
        k = _check_count(count_arg, n, available)
        data = np.concatenate([d for d, _ in parts])[:k] if len(parts) > 1 else parts[0][0][:k]
        labels = np.concatenate([lab for _, lab in parts])[:k]
        return _to_float(data.reshape(-1, 3, 32, 32), 255.0), _to_labels(labels)

    x_train, y_train = collect(train_paths, "n_train", n_train)
    x_test, y_test = collect([test_path], "n_test", n_test)
    return Dataset(
        name="cifar10",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        n_classes=10,
        input_shape=(3, 32, 32),
    )


# --------------------------------------------------------------------------- #
# Public entry points
# --------------------------------------------------------------------------- #


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    verify: bool = True,
    n_train: int | None = None,
    n_test: int | None = None,
    format: str = "auto",
) -> Dataset:
    """Load a dataset as float32 tensors in [0, 1] and int64 labels.

    Args:
        name: ``"digits"``, ``"mnist"`` or ``"cifar10"`` (case-insensitive).
        data_dir: folder holding ``mnist/`` / ``cifar-10-batches-*/``; see
            :func:`resolve_data_dir`. Not used (nor needed) for ``"digits"``.
        verify: check every file against its published md5 (cached per
            path, size and mtime, so repeated loads are quick).
        n_train, n_test: keep only the first n examples of each split
            (``0 < n <= available``).
        format: CIFAR-10 only: ``"bin"``, ``"py"`` or ``"auto"`` (binary
            version if its folder exists, else the python version).

    Returns:
        A :class:`Dataset`; x shapes ``(N, 1, 8, 8)`` (digits),
        ``(N, 1, 28, 28)`` (MNIST: 60000/10000), ``(N, 3, 32, 32)``
        (CIFAR-10: 50000/10000).

    Raises:
        DatasetError: unknown name, bad argument, missing/corrupt file.
    """
    if not isinstance(name, str):
        raise DatasetError(f"dataset name must be a string, got {type(name).__name__}; use one of {DATASET_NAMES}")
    key = name.strip().lower()
    if key not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; allowed names: {', '.join(DATASET_NAMES)}")
    if format not in _CIFAR_FORMATS:
        raise DatasetError(f"format must be one of {_CIFAR_FORMATS}, got {format!r}")
    if key != "cifar10" and format != "auto":
        raise DatasetError(f"format={format!r} applies only to 'cifar10', not to {key!r}")
    if key == "digits":
        return _load_digits(n_train, n_test)
    root = resolve_data_dir(data_dir)
    if key == "mnist":
        return _load_mnist(root, verify, n_train, n_test)
    return _load_cifar10(root, verify, n_train, n_test, format)


def iterate_batches(
    x: torch.Tensor,
    y: torch.Tensor,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(xb, yb)`` mini-batches covering one epoch.

    With ``shuffle=True`` one permutation is drawn with ``torch.randperm``
    (using ``generator`` if given, so a seeded generator reproduces the
    order) and ``x``/``y`` are indexed once per epoch; batches are then
    contiguous slices. Without shuffling, batches are views of ``x``/``y``.

    Shapes: ``xb`` is ``(B, *x.shape[1:])``, ``yb`` is ``(B, *y.shape[1:])``,
    ``B = batch_size`` except possibly the last batch (dropped if
    ``drop_last``). Arguments are checked when called, not on first ``next``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise DatasetError(f"batch_size must be a positive int, got {batch_size!r}")
    if x.ndim == 0 or y.ndim == 0 or x.shape[0] != y.shape[0]:
        raise DatasetError(
            f"x and y must have the same number of examples (first dim), got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    n = int(x.shape[0])
    batch_size = int(batch_size)

    if shuffle:
        device = generator.device if generator is not None else torch.device("cpu")
        perm = torch.randperm(n, generator=generator, device=device)
        x = x[perm.to(x.device)]
        y = y[perm.to(y.device)]

    stop = n - n % batch_size if drop_last else n

    def _gen() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for start in range(0, stop, batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]

    return _gen()


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation of images ``(N, C, H, W)``, each ``(C,)``."""
    if x.dim() != 4:
        raise ValueError(f"channel statistics need images (N, C, H, W), got shape {tuple(x.shape)}")
    xd = x.transpose(0, 1).reshape(x.shape[1], -1).double()
    return xd.mean(1).to(x.dtype), xd.std(1).to(x.dtype)


def normalize(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """``(x − mean_c) / std_c`` per channel for a batch ``(B, C, H, W)``."""
    return (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1)


def random_crop_flip(x: torch.Tensor, *, pad: int = 4, flip: bool = True,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Random crop with zero padding ``pad`` and random horizontal flip, for a whole batch at once.

    Each image of ``x`` ``(B, C, H, W)`` gets its own offset in ``[0, 2·pad]²`` and its own coin
    for the flip (the standard CIFAR-10 augmentation of the paper, App. F.1), done with one
    gather on the padded batch: no per-image Python loop.
    """
    if x.dim() != 4:
        raise ValueError(f"augmentation needs images (B, C, H, W), got shape {tuple(x.shape)}")
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    b, c, h, w = x.shape
    dev = x.device
    if pad:
        xp = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=generator).to(dev)
        rows = (oy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # (B, 1, H, 1)
        cols = (ox[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # (B, 1, 1, W)
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(c, device=dev)[None, :, None, None]
        x = xp[bi, ci, rows, cols]
    if flip:
        coin = (torch.rand(b, generator=generator) < 0.5).to(dev).view(-1, 1, 1, 1)
        x = torch.where(coin, x.flip(-1), x)
    return x
