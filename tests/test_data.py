"""Tests for neuromorph.data against the real dataset files in ../shared/data.

The real files are found at ``<repo root>/../shared/data``. When absent, the
tests that need them are skipped with a message - unless ``CI=true``, where a
missing dataset is a failure (CI must exercise the real loaders).
"""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from neuromorph import data as data_mod
from neuromorph.data import (
    DATASET_NAMES,
    Dataset,
    DatasetError,
    iterate_batches,
    load_dataset,
    resolve_data_dir,
)

REAL_DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
MNIST_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)
CIFAR_BIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6)) + ("test_batch.bin",)


def _require(subdir: str, files: tuple[str, ...]) -> Path:
    """Return REAL_DATA_DIR, or skip (fail when CI=true) if ``subdir/files`` are absent."""
    missing = [REAL_DATA_DIR / subdir / f for f in files if not (REAL_DATA_DIR / subdir / f).is_file()]
    if missing:
        msg = f"real dataset files absent: {', '.join(map(str, missing))} (expected under ../shared/data)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(msg + "; CI=true, so this is an error, not a skip")
        pytest.skip(msg)
    return REAL_DATA_DIR


@pytest.fixture(scope="module")
def mnist_dir() -> Path:
    return _require("mnist", MNIST_FILES)


@pytest.fixture(scope="module")
def cifar_dir() -> Path:
    return _require("cifar-10-batches-bin", CIFAR_BIN_FILES)


@pytest.fixture(scope="module")
def mnist(mnist_dir: Path) -> Dataset:
    return load_dataset("mnist", mnist_dir)


@pytest.fixture(scope="module")
def cifar(cifar_dir: Path) -> Dataset:
    return load_dataset("cifar10", cifar_dir, format="bin")


def _mnist_copy(src: Path, dst: Path) -> Path:
    """A data dir at ``dst`` whose mnist/ links to the real files (copy what you then modify)."""
    (dst / "mnist").mkdir(parents=True)
    for f in MNIST_FILES:
        (dst / "mnist" / f).symlink_to(src / "mnist" / f)
    return dst


def _replace_with_copy(path: Path) -> None:
    real = path.resolve()
    path.unlink()
    shutil.copyfile(real, path)


# --------------------------------------------------------------------------- #
# MNIST
# --------------------------------------------------------------------------- #


def test_mnist_loads(mnist: Dataset) -> None:
    assert mnist.name == "mnist"
    assert mnist.x_train.shape == (60000, 1, 28, 28)
    assert mnist.x_test.shape == (10000, 1, 28, 28)
    assert mnist.y_train.shape == (60000,) and mnist.y_test.shape == (10000,)
    assert mnist.x_train.dtype == torch.float32 and mnist.y_train.dtype == torch.int64
    assert mnist.input_shape == (1, 28, 28) and mnist.n_features == 784 and mnist.n_classes == 10
    assert int(torch.bincount(mnist.y_train, minlength=10).sum()) == 60000
    assert int(torch.bincount(mnist.y_test, minlength=10).sum()) == 10000
    assert torch.bincount(mnist.y_train, minlength=10).tolist()[5] == 5421  # published class count
    for x in (mnist.x_train, mnist.x_test):
        assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert int(mnist.y_train[0]) == 5
    assert int(mnist.y_test[0]) == 7


def test_mnist_subset_and_bad_counts(mnist_dir: Path, mnist: Dataset) -> None:
    small = load_dataset("mnist", mnist_dir, n_train=100, n_test=10)
    assert small.x_train.shape == (100, 1, 28, 28) and small.x_test.shape == (10, 1, 28, 28)
    assert torch.equal(small.x_train, mnist.x_train[:100])
    assert torch.equal(small.y_test, mnist.y_test[:10])
    for kwargs in ({"n_train": 0}, {"n_train": 60001}, {"n_test": -1}, {"n_test": 10001}):
        with pytest.raises(DatasetError, match="n_t"):
            load_dataset("mnist", mnist_dir, **kwargs)


def test_md5_cache_avoids_rehash(mnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    load_dataset("mnist", mnist_dir, n_train=1, n_test=1)  # populate the cache
    calls: list[Path] = []
    real = data_mod._compute_md5
    monkeypatch.setattr(data_mod, "_compute_md5", lambda p: calls.append(p) or real(p))
    load_dataset("mnist", mnist_dir, n_train=1, n_test=1)
    assert calls == []


def test_mnist_flipped_byte_md5_error(mnist_dir: Path, tmp_path: Path) -> None:
    root = _mnist_copy(mnist_dir, tmp_path)
    target = root / "mnist" / "train-labels-idx1-ubyte.gz"
    _replace_with_copy(target)
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", root)
    msg = str(err.value)
    assert str(target) in msg
    assert "d53e105ee54ea40749a09fcbcd1e9432" in msg  # expected
    assert data_mod._compute_md5(target) in msg  # actual


def test_mnist_truncated_gz_without_verify(mnist_dir: Path, tmp_path: Path) -> None:
    root = _mnist_copy(mnist_dir, tmp_path)
    target = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = target.read_bytes()
    target.unlink()
    target.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", root, verify=False)


def test_mnist_not_gzip_without_verify(mnist_dir: Path, tmp_path: Path) -> None:
    root = _mnist_copy(mnist_dir, tmp_path)
    target = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    target.unlink()
    target.write_bytes(b"this is not gzip data at all")
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz"):
        load_dataset("mnist", root, verify=False)


@pytest.mark.parametrize(
    ("payload", "what"),
    [
        ((2051).to_bytes(4, "big") + (10000).to_bytes(4, "big") + bytes(10000), "magic"),
        ((2049).to_bytes(4, "big") + (10000).to_bytes(4, "big") + bytes(9999), "size does not match"),
        ((2049).to_bytes(4, "big") + (10000).to_bytes(4, "big") + bytes(10001), "size does not match"),
        (b"\x00\x00", "too short"),
    ],
)
def test_mnist_bad_header_without_verify(mnist_dir: Path, tmp_path: Path, payload: bytes, what: str) -> None:
    root = _mnist_copy(mnist_dir, tmp_path)
    target = root / "mnist" / "t10k-labels-idx1-ubyte.gz"
    target.unlink()
    target.write_bytes(gzip.compress(payload))
    with pytest.raises(DatasetError, match=what) as err:
        load_dataset("mnist", root, verify=False)
    assert str(target) in str(err.value)


def test_mnist_missing_file(mnist_dir: Path, tmp_path: Path) -> None:
    root = _mnist_copy(mnist_dir, tmp_path)
    (root / "mnist" / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist", root)
    msg = str(err.value)
    assert str(root / "mnist" / "t10k-images-idx3-ubyte.gz") in msg
    assert "searched directory" in msg and str(root / "mnist") in msg


def test_mnist_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="missing file") as err:
        load_dataset("mnist", tmp_path)
    assert str(tmp_path / "mnist") in str(err.value)


# --------------------------------------------------------------------------- #
# CIFAR-10
# --------------------------------------------------------------------------- #


def test_cifar10_bin_loads(cifar: Dataset) -> None:
    assert cifar.name == "cifar10"
    assert cifar.x_train.shape == (50000, 3, 32, 32) and cifar.x_test.shape == (10000, 3, 32, 32)
    assert cifar.x_train.dtype == torch.float32 and cifar.y_test.dtype == torch.int64
    assert cifar.input_shape == (3, 32, 32) and cifar.n_features == 3072 and cifar.n_classes == 10
    assert torch.bincount(cifar.y_train, minlength=10).tolist() == [5000] * 10
    assert torch.bincount(cifar.y_test, minlength=10).tolist() == [1000] * 10
    assert float(cifar.x_train.min()) >= 0.0 and float(cifar.x_train.max()) <= 1.0
    n_per_channel = 50000 * 32 * 32
    mean = cifar.x_train.sum(dim=(0, 2, 3), dtype=torch.float64) * 255.0 / n_per_channel
    np.testing.assert_allclose(mean.numpy(), [125.307, 122.950, 113.865], atol=0.01)


def _bin_records(cifar_dir: Path, fname: str, start: int, count: int) -> np.ndarray:
    raw = (cifar_dir / "cifar-10-batches-bin" / fname).read_bytes()
    return np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3073)[start : start + count]


def _write_py_batches(dst: Path, cifar_dir: Path, start: int, count: int) -> None:
    """A synthetic cifar-10-batches-py/ built from records [start, start+count) of each real bin batch."""
    folder = dst / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for bin_name in CIFAR_BIN_FILES:
        rec = _bin_records(cifar_dir, bin_name, start, count)
        batch = {
            b"batch_label": b"synthetic",
            b"labels": [int(v) for v in rec[:, 0]],
            b"data": np.ascontiguousarray(rec[:, 1:]),
            b"filenames": [b"img%d.png" % i for i in range(count)],
        }
        with open(folder / bin_name.removesuffix(".bin"), "wb") as f:
            pickle.dump(batch, f, protocol=2)


def _write_bin_batches(dst: Path, cifar_dir: Path, start: int, count: int) -> None:
    folder = dst / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    for bin_name in CIFAR_BIN_FILES:
        (folder / bin_name).write_bytes(_bin_records(cifar_dir, bin_name, start, count).tobytes())


def test_cifar10_pickle_matches_bin(cifar_dir: Path, cifar: Dataset, tmp_path: Path) -> None:
    k = 20
    _write_py_batches(tmp_path, cifar_dir, 0, k)
    py = load_dataset("cifar10", tmp_path, format="py", verify=False)
    assert py.x_train.shape == (5 * k, 3, 32, 32) and py.x_test.shape == (k, 3, 32, 32)
    idx = torch.cat([torch.arange(b * 10000, b * 10000 + k) for b in range(5)])
    assert torch.equal(py.x_train, cifar.x_train[idx])
    assert torch.equal(py.y_train, cifar.y_train[idx])
    assert torch.equal(py.x_test, cifar.x_test[:k])
    assert torch.equal(py.y_test, cifar.y_test[:k])
    auto = load_dataset("cifar10", tmp_path, verify=False)  # only the py folder exists
    assert torch.equal(auto.x_train, py.x_train)
    # The synthetic pickles are not the published files: verification must say so.
    with pytest.raises(DatasetError, match="md5 mismatch") as err:
        load_dataset("cifar10", tmp_path, format="py")
    assert "c99cafc152244af753f735de768cd75f" in str(err.value)


def test_cifar10_auto_prefers_bin(cifar_dir: Path, cifar: Dataset, tmp_path: Path) -> None:
    _write_bin_batches(tmp_path, cifar_dir, 0, 5)
    _write_py_batches(tmp_path, cifar_dir, 5, 5)  # different records: tells the two apart
    auto = load_dataset("cifar10", tmp_path, verify=False)
    assert torch.equal(auto.x_test, cifar.x_test[:5])
    py = load_dataset("cifar10", tmp_path, verify=False, format="py")
    assert torch.equal(py.x_test, cifar.x_test[5:10])


def test_cifar10_pickle_refuses_foreign_globals(cifar_dir: Path, tmp_path: Path) -> None:
    _write_py_batches(tmp_path, cifar_dir, 0, 2)
    evil = tmp_path / "cifar-10-batches-py" / "test_batch"
    evil.write_bytes(pickle.dumps({b"data": os.getcwd, b"labels": []}))
    with pytest.raises(DatasetError, match="not allowed") as err:
        load_dataset("cifar10", tmp_path, format="py", verify=False)
    assert str(evil) in str(err.value)


def test_cifar10_bad_bin_size(cifar_dir: Path, tmp_path: Path) -> None:
    _write_bin_batches(tmp_path, cifar_dir, 0, 3)
    target = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    target.write_bytes(target.read_bytes()[:-1])
    with pytest.raises(DatasetError, match="data_batch_3.bin"):
        load_dataset("cifar10", tmp_path, verify=False)


def test_cifar10_not_found(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="cifar-10-batches-bin"):
        load_dataset("cifar10", tmp_path)
    with pytest.raises(DatasetError, match="missing file"):
        load_dataset("cifar10", tmp_path, format="py")
    with pytest.raises(DatasetError, match="format"):
        load_dataset("cifar10", tmp_path, format="zip")


# --------------------------------------------------------------------------- #
# digits (no data dir)
# --------------------------------------------------------------------------- #


def test_digits_without_data_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEUROMORPH_DATA", str(tmp_path / "does-not-exist"))  # must not be consulted
    d = load_dataset("digits")
    assert d.x_train.shape == (1497, 1, 8, 8) and d.x_test.shape == (300, 1, 8, 8)
    assert d.input_shape == (1, 8, 8) and d.n_features == 64 and d.n_classes == 10
    assert float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    # stratified: every class has 29 or 30 test examples out of ~180 per class
    counts = torch.bincount(d.y_test, minlength=10)
    assert int(counts.min()) >= 29 and int(counts.max()) <= 31
    again = load_dataset("digits", n_train=10, n_test=5)
    assert torch.equal(again.x_train, d.x_train[:10]) and torch.equal(again.y_test, d.y_test[:5])
    with pytest.raises(DatasetError, match="n_train"):
        load_dataset("digits", n_train=1498)


# --------------------------------------------------------------------------- #
# names, data dir resolution
# --------------------------------------------------------------------------- #


def test_unknown_name_lists_allowed() -> None:
    with pytest.raises(DatasetError) as err:
        load_dataset("imagenet")
    for name in DATASET_NAMES:
        assert name in str(err.value)
    assert isinstance(err.value, ValueError)


def test_env_var_honoured(mnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("NEUROMORPH_DATA", str(mnist_dir))
    assert resolve_data_dir(None) == mnist_dir
    assert load_dataset("mnist", n_train=3, n_test=3).y_train.tolist() == [5, 0, 4]
    # the explicit argument wins over the environment variable
    assert resolve_data_dir(tmp_path) == tmp_path
    monkeypatch.setenv("NEUROMORPH_DATA", str(tmp_path))
    with pytest.raises(DatasetError) as err:
        load_dataset("mnist")
    assert str(tmp_path / "mnist") in str(err.value)
    monkeypatch.setenv("NEUROMORPH_DATA", str(tmp_path / "nope"))
    with pytest.raises(DatasetError, match="NEUROMORPH_DATA"):
        resolve_data_dir(None)


def test_resolve_default_and_none_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("NEUROMORPH_DATA", raising=False)
    if REAL_DATA_DIR.is_dir():
        assert resolve_data_dir(None).resolve() == REAL_DATA_DIR.resolve()
    monkeypatch.setattr(data_mod, "_default_data_dir", lambda: tmp_path / "absent")
    with pytest.raises(DatasetError) as err:
        resolve_data_dir(None)
    msg = str(err.value)
    assert "data_dir" in msg and "NEUROMORPH_DATA" in msg and str(tmp_path / "absent") in msg
    with pytest.raises(DatasetError, match="does not exist"):
        resolve_data_dir(tmp_path / "absent")


# --------------------------------------------------------------------------- #
# iterate_batches
# --------------------------------------------------------------------------- #


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("n,batch", [(10, 3), (12, 4), (5, 8)])
def test_iterate_batches_covers_each_example_once(shuffle: bool, n: int, batch: int) -> None:
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1).repeat(1, 2)
    y = torch.arange(n)
    batches = list(iterate_batches(x, y, batch, shuffle=shuffle, generator=torch.Generator().manual_seed(1)))
    assert [len(b[1]) for b in batches[:-1]] == [batch] * (len(batches) - 1)
    seen_y = torch.cat([yb for _, yb in batches])
    seen_x = torch.cat([xb for xb, _ in batches])
    assert sorted(seen_y.tolist()) == list(range(n))
    assert torch.equal(seen_x[:, 0].long(), seen_y)  # x and y stay paired
    if not shuffle:
        assert seen_y.tolist() == list(range(n))


def test_iterate_batches_seeded_order_and_drop_last() -> None:
    x = torch.randn(103, 4)
    y = torch.arange(103)

    def order(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([yb for _, yb in iterate_batches(x, y, 10, shuffle=True, generator=g)]).tolist()

    assert order(7) == order(7)
    assert order(7) != order(8)
    assert order(7) != list(range(103))
    g = torch.Generator().manual_seed(0)
    first, second = (
        torch.cat([yb for _, yb in iterate_batches(x, y, 10, shuffle=True, generator=g)]).tolist() for _ in range(2)
    )
    assert first != second  # the generator advances: a new order each epoch
    dropped = list(iterate_batches(x, y, 10, shuffle=True, drop_last=True, generator=g))
    assert len(dropped) == 10 and all(len(yb) == 10 for _, yb in dropped)
    assert len(list(iterate_batches(x, y, 200, shuffle=False, drop_last=True))) == 0


def test_iterate_batches_bad_args() -> None:
    x, y = torch.zeros(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(DatasetError, match="batch_size"):
        iterate_batches(x, y, 0, shuffle=False)
    with pytest.raises(DatasetError, match="same number"):
        iterate_batches(x, y[:3], 2, shuffle=False)


def test_random_crop_flip_is_a_batched_crop_of_the_padded_image():
    import torch

    from neuromorph.data import channel_stats, normalize, random_crop_flip

    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=g)
    y = random_crop_flip(x, pad=2, flip=True, generator=torch.Generator().manual_seed(1))
    xp = torch.nn.functional.pad(x, (2, 2, 2, 2))
    # every output image is some 8x8 window of its padded input, possibly mirrored
    for b in range(0, 64, 7):
        windows = [xp[b, :, i:i + 8, j:j + 8] for i in range(5) for j in range(5)]
        found = any(torch.equal(y[b], w) or torch.equal(y[b], w.flip(-1)) for w in windows)
        assert found, b
    # both flips and several offsets occur; the same generator seed repeats the batch exactly
    assert not torch.equal(y, x)
    assert torch.equal(y, random_crop_flip(x, pad=2, generator=torch.Generator().manual_seed(1)))
    assert torch.equal(random_crop_flip(x, pad=0, flip=False), x)
    mean, std = channel_stats(x)
    z = normalize(x, mean, std)
    torch.testing.assert_close(z.transpose(0, 1).reshape(3, -1).mean(1), torch.zeros(3), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.transpose(0, 1).reshape(3, -1).std(1), torch.ones(3), atol=1e-5, rtol=0)


def test_cifar_channel_stats_match_published(shared_data):
    from neuromorph.data import channel_stats, load_dataset

    ds = load_dataset("cifar10", shared_data)
    mean, std = channel_stats(ds.x_train)
    assert [round(float(v) * 255, 2) for v in mean] == pytest.approx([125.307, 122.950, 113.865], abs=0.01)
    assert [round(float(v) * 255, 2) for v in std] == pytest.approx([62.993, 62.089, 66.705], abs=0.02)
