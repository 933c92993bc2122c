"""Data sources: the CIFAR-10 loader (checksum before unpickling, restricted unpickler, download path) on small
archives in the CIFAR-10 python format that the tests write themselves; digits, Gaussian noise, the 1-D grid."""

import io
import os
import pickle
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from nablax import data
from nablax.data import DataUnavailable


@pytest.fixture
def archive(tmp_path):
    path = tmp_path / data.CIFAR10_ARCHIVE
    md5 = data.write_cifar_like_archive(path, n_per_batch=12, seed=3)
    return path, md5


def _raw_batches(path):
    """The batches read with the plain (unrestricted) unpickler, to compare the loader against."""
    out = {}
    with tarfile.open(path) as tar:
        for name in data.CIFAR10_TRAIN + data.CIFAR10_TEST:
            out[name] = pickle.loads(tar.extractfile(f"{data.CIFAR10_FOLDER}/{name}").read(), encoding="bytes")
    return out


def test_archive_loads_and_standardises_on_the_training_set(archive):
    path, md5 = archive
    ds = data.load_cifar10(path, md5=md5)
    raw = _raw_batches(path)
    x_train = np.concatenate([raw[n][b"data"] for n in data.CIFAR10_TRAIN]).astype(float)
    y_train = np.concatenate([raw[n][b"labels"] for n in data.CIFAR10_TRAIN])
    mean, std = x_train.mean(0), x_train.std(0)
    assert ds.x_train.shape == (60, 3072) and ds.x_test.shape == (12, 3072) and ds.n_classes == 10
    np.testing.assert_array_equal(ds.y_train, y_train)
    np.testing.assert_allclose(ds.x_train, (x_train - mean) / std, rtol=1e-12)
    # the test set is mapped with the TRAINING statistics, so it is not itself standardised
    np.testing.assert_allclose(ds.x_test, (raw["test_batch"][b"data"] - mean) / std, rtol=1e-12)
    np.testing.assert_allclose(ds.x_train.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(ds.x_train.std(0), 1, rtol=1e-12)
    # a folder holding the archive works too, and n_train keeps the first images
    small = data.load_cifar10(path.parent, md5=md5, n_train=7, standardize=False)
    np.testing.assert_array_equal(small.x_train, x_train[:7])


def test_extracted_folder_is_checked_file_by_file(archive, tmp_path):
    path, md5 = archive
    folder = tmp_path / "x" / data.CIFAR10_FOLDER
    folder.mkdir(parents=True)
    with tarfile.open(path) as tar:
        for name in data.CIFAR10_TRAIN + data.CIFAR10_TEST:
            (folder / name).write_bytes(tar.extractfile(f"{data.CIFAR10_FOLDER}/{name}").read())
    sums = {name: data.file_md5(folder / name) for name in data.CIFAR10_TRAIN + data.CIFAR10_TEST}
    a = data.load_cifar10(folder, file_md5s=sums)
    b = data.load_cifar10(path, md5=md5)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    with pytest.raises(DataUnavailable, match="MD5"):
        data.load_cifar10(folder)  # the published per-file checksums do not match the test files


def _refuse_unpickling(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("something was unpickled before the checksum was verified")

    monkeypatch.setattr(data, "restricted_loads", boom)
    monkeypatch.setattr(pickle, "loads", boom)


def test_tampered_and_truncated_archives_are_refused_before_unpickling(archive, monkeypatch):
    path, md5 = archive
    blob = bytearray(path.read_bytes())
    _refuse_unpickling(monkeypatch)
    blob[len(blob) // 2] ^= 0x01
    path.write_bytes(bytes(blob))
    with pytest.raises(DataUnavailable, match="does not match the expected") as err:
        data.load_cifar10(path, md5=md5)
    assert "--cifar" in str(err.value) and "nothing in it was unpickled" in str(err.value)
    path.write_bytes(bytes(blob[: len(blob) // 3]))
    with pytest.raises(DataUnavailable, match="MD5"):
        data.load_cifar10(path, md5=md5)


def test_the_real_checksum_is_the_default(archive, monkeypatch):
    path, _ = archive
    _refuse_unpickling(monkeypatch)
    with pytest.raises(DataUnavailable, match=data.CIFAR10_MD5):
        data.load_cifar10(path)
    assert data.CIFAR10_MD5 == "c58f30108f718f92721af3b95e74349a"


class _Payload:
    """A pickle that would run code when loaded by an unrestricted unpickler."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def _archive_with(tmp_path, payload_batch):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for name in data.CIFAR10_TRAIN + data.CIFAR10_TEST:
            blob = pickle.dumps(payload_batch, protocol=4)
            info = tarfile.TarInfo(f"{data.CIFAR10_FOLDER}/{name}")
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return path, data.file_md5(path)


def test_restricted_unpickler_refuses_code_even_with_a_matching_checksum(tmp_path):
    target = tmp_path / "pwned"
    batch = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1], b"x": _Payload(target)}
    path, md5 = _archive_with(tmp_path, batch)
    with pytest.raises(DataUnavailable, match="refusing to load global"):
        data.load_cifar10(path, md5=md5)
    assert not target.exists()
    for module, name in [("os", "system"), ("builtins", "eval"), ("numpy", "load")]:
        with pytest.raises(pickle.UnpicklingError):
            data.RestrictedUnpickler(io.BytesIO(b"")).find_class(module, name)
    # both homes of numpy's array reconstructor (NumPy 1 archives name numpy.core) resolve
    r = data.RestrictedUnpickler(io.BytesIO(b""))
    assert r.find_class("numpy.core.multiarray", "_reconstruct") is r.find_class("numpy._core.multiarray", "_reconstruct")


@pytest.mark.parametrize("batch, message", [
    ({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, "shape"),
    ({b"data": np.zeros((2, 3072), np.float64), b"labels": [0, 1]}, "uint8"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 12]}, "0..9"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "labels"),
    ([1, 2, 3], "dict"),
])
def test_malformed_batches_are_refused(tmp_path, batch, message):
    path, md5 = _archive_with(tmp_path, batch)
    with pytest.raises(DataUnavailable, match=message):
        data.load_cifar10(path, md5=md5)


RECONSTRUCT = np.ndarray((0,)).__reduce__()[0]  # numpy's own array reconstructor (an admitted global)


class _CraftedDtype:
    """Pickles as ``numpy.dtype(spec)`` with the dtype state ``state`` (what numpy itself writes, but any values)."""

    def __init__(self, spec, flags=0):
        self.spec, self.state = spec, (3, "|", None, None, None, -1, -1, flags)

    def __reduce__(self):
        return (np.dtype, (self.spec, False, True), self.state)


class _CraftedArray:
    """Pickles with only the admitted globals (``_reconstruct``, ``ndarray``, ``dtype``) as numpy writes arrays, but
    with any dtype, shape and raw bytes: an object dtype makes numpy read those bytes as pointers."""

    def __init__(self, dtype, shape, raw):
        self.dtype, self.shape, self.raw = dtype, shape, raw

    def __reduce__(self):
        return (RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, self.shape, self.dtype, False, self.raw))


def _crafted_archive(tmp_path, array):
    return _archive_with(tmp_path, {b"data": array, b"labels": [0, 1]})


def test_crafted_object_dtype_pickle_is_refused_without_crashing(tmp_path):
    """An object array of raw bytes segfaulted the process inside ``restricted_loads``; the loader runs in a
    subprocess here, so that a crash fails this test instead of killing pytest."""
    path, md5 = _crafted_archive(tmp_path, _CraftedArray(_CraftedDtype("O8"), (4,), b"\x41" * 32))
    code = (f"import pickle, tarfile\nfrom nablax import data\n"
            f"try:\n    data.load_cifar10({str(path)!r}, md5={md5!r})\n"
            f"except data.DataUnavailable as err:\n    print('refused:', err)\n"
            f"blob = tarfile.open({str(path)!r}).extractfile('cifar-10-batches-py/test_batch').read()\n"
            f"try:\n    print(repr(data.restricted_loads(blob)))\n"
            f"except pickle.UnpicklingError as err:\n    print('refused:', err)\n")
    repo = str(Path(__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])}
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 0, f"the loader crashed (status {res.returncode}): {res.stderr[-2000:]}"
    refusals = [line for line in res.stdout.splitlines() if line.startswith("refused:")]
    assert len(refusals) == 2 and all("refusing dtype 'O8'" in line and "uint8" in line for line in refusals)


@pytest.mark.parametrize("array, message", [
    (_CraftedArray(_CraftedDtype("u1"), (1 << 40, 1 << 20), b"\x00" * 32), "shape"),  # refused before allocating
    (_CraftedArray(_CraftedDtype("u1"), (2, 3, 512), b"\x00" * 3072), "1-D and 2-D"),
    (_CraftedArray(_CraftedDtype("u8", flags=63), (4,), b"\x41" * 32), "flags"),  # u8 flagged as holding objects
    (_CraftedArray(_CraftedDtype("V8"), (4,), b"\x41" * 32), "refusing dtype 'V8'"),
    (_CraftedArray(_CraftedDtype("u1"), (2, 3072), "text, not bytes"), "plain bytes"),
])
def test_every_refusal_of_the_unpickler_is_the_loaders_own_error(tmp_path, array, message):
    path, md5 = _crafted_archive(tmp_path, array)
    with pytest.raises(DataUnavailable, match=message):
        data.load_cifar10(path, md5=md5)
    with pytest.raises(pickle.UnpicklingError, match=message):
        data.restricted_loads(pickle.dumps(array, protocol=4))
    for blob in (b"\x80\x04garbage", pickle.dumps([1, 2])[:-3], b""):  # malformed streams
        with pytest.raises(pickle.UnpicklingError):
            data.restricted_loads(blob)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_the_archive_writer_and_the_loader_agree_on_every_protocol(tmp_path, protocol):
    path = tmp_path / data.CIFAR10_ARCHIVE
    md5 = data.write_cifar_like_archive(path, n_per_batch=5, seed=1, protocol=protocol)
    ds = data.load_cifar10(path, md5=md5, standardize=False)
    raw = _raw_batches(path)
    np.testing.assert_array_equal(ds.x_train, np.concatenate([raw[n][b"data"] for n in data.CIFAR10_TRAIN]))
    np.testing.assert_array_equal(ds.y_test, raw["test_batch"][b"labels"])
    for a in (np.arange(6, dtype=">i4").reshape(2, 3), np.asfortranarray(np.eye(3, dtype=np.uint8)),
              np.zeros((0, 3072), np.uint8)):
        got = data.restricted_loads(pickle.dumps({b"a": a, b"e": b""}, protocol=protocol))
        np.testing.assert_array_equal(got[b"a"], a)
        assert got[b"a"].dtype == a.dtype and got[b"e"] == b""


def test_missing_data_says_how_to_supply_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NABLAX_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataUnavailable, match="--cifar PATH") as err:
        data.load_cifar10()
    assert data.CIFAR10_URL in str(err.value)
    with pytest.raises(DataUnavailable, match="not found"):
        data.load_dataset("cifar10", cifar=tmp_path / "nowhere")


def test_download_path_verifies_and_fails_cleanly(archive, tmp_path):
    path, md5 = archive
    cache = tmp_path / "cache"
    got = data.download_cifar10(cache, url=path.as_uri(), md5=md5)  # a file:// URL stands in for the network
    assert got == cache / data.CIFAR10_ARCHIVE and data.file_md5(got) == md5
    ds = data.load_cifar10(cache_dir=tmp_path / "cache2", download=True, url=path.as_uri(), md5=md5)
    assert ds.x_train.shape == (60, 3072)
    with pytest.raises(DataUnavailable, match="MD5"):  # wrong content: nothing is kept
        data.download_cifar10(tmp_path / "c3", url=path.as_uri(), md5="0" * 32)
    assert not any((tmp_path / "c3").iterdir())
    with pytest.raises(DataUnavailable, match="could not download") as err:  # no network: a clean message
        data.load_cifar10(cache_dir=tmp_path / "c4", download=True, url="http://127.0.0.1:9/cifar.tar.gz")
    assert "--cifar" in str(err.value)
    assert not any((tmp_path / "c4").iterdir())


def test_digits_noise_and_grid():
    d = data.load_digits()
    assert d.x_train.shape == (1797, 64) and d.n_classes == 10 and set(np.unique(d.y_train)) == set(range(10))
    np.testing.assert_allclose(d.x_train.mean(0), 0, atol=1e-12)
    assert np.all(np.isclose(d.x_train.std(0), 1) | np.isclose(d.x_train.std(0), 0))  # constant pixels stay 0
    split = data.load_digits(test_fraction=0.25, seed=1)
    assert split.n_train + len(split.y_test) == 1797
    sub = data.load_dataset("digits", n_train=100, seed=2)
    assert sub.x_train.shape == (100, 64)
    g1, g2 = data.gaussian_noise(50, 7, seed=4), data.gaussian_noise(50, 7, seed=4)
    np.testing.assert_array_equal(g1.x_train, g2.x_train)
    assert g1.x_train.shape == (50, 7) and g1.y_train.max() < 10
    grid = data.grid_1d()
    assert grid.x_train.shape == (256, 1) and grid.x_train[0, 0] == -2 and grid.x_train[-1, 0] == 2
    assert data.grid_1d(kind="arange").x_train[-1, 0] == pytest.approx(2 - 4 / 256)
    with pytest.raises(ValueError, match="unknown data source"):
        data.load_dataset("mnist")
