"""Data sets for Bayesian logistic regression (task ``bayesian_logreg``).

Every loader returns raw features with binary labels in {0, 1} already split
into train and test parts (:class:`BlrData`); :func:`standardise` then scales
with *train* statistics only and appends the intercept column.

Sources, by data set name
-------------------------
``breast_cancer``
    scikit-learn's shipped copy (569 x 30); works offline everywhere.
``synthetic``
    1000 x 5 Gaussian features, labels from known generating weights
    (:data:`SYNTHETIC_WEIGHTS`, intercept last); works offline everywhere.
Rätsch benchmarks (``banana diabetis german image ringnorm splice twonorm waveform``)
    1. the canonical ``benchmarks.mat`` in the data directory (sha256 checked),
       with its own train/test splits; ``split`` selects one (0-based);
    2. otherwise a local single-split copy in another format, as kept in
       ``shared/data/blr`` (``ratsch_split_<name>.mat`` with its train/test
       split; ``fsvm_<name>.mat`` or ``keel_<name>.dat`` without one, split
       80/20 at random from ``split``); each copy's sha256 is pinned;
    3. otherwise ``benchmarks.mat`` is downloaded (checksum verified).
``covtype``
    LIBSVM ``covtype.libsvm.binary.scale.bz2`` (or the decompressed file),
    labels {1, 2}; split 80/20 at random from ``split``. Its sha256 is not
    known to us, so the file is verified by structure instead (581012 rows,
    54 features, two labels) and its hash is reported in the provenance.

Random 80/20 splits use ``numpy.random.default_rng([42, split])`` (the study
used one 80/20 split with seed 42), independent of the run seed, so all
seeds and solvers see the same data.

Data directory: the ``data_dir`` argument, else ``$GFBENCH_DATA``, else
``~/.cache/gfbench``. Set ``GFBENCH_NO_DOWNLOAD=1`` to never touch the network.
Any missing, corrupt or mismatching file raises :class:`DataUnavailableError`
(a ``ValueError``) naming the file and where to put it.
"""
from __future__ import annotations

import bz2
import hashlib
import os
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

RATSCH = ("banana", "diabetis", "german", "image", "ringnorm", "splice", "twonorm", "waveform")
OFFLINE = ("breast_cancer", "synthetic")
DATASETS = OFFLINE + RATSCH + ("covtype",)

BENCHMARKS_FILE = "benchmarks.mat"
BENCHMARKS_SHA256 = "47c19e4bc4716edc4077cfa5ea61edf4d02af4ec51a0ecfe035626ae8b561c75"
BENCHMARKS_URL = ("https://raw.githubusercontent.com/tdiethe/"
                  "gunnar_raetsch_benchmark_datasets/master/benchmarks.mat")
COVTYPE_FILE = "covtype.libsvm.binary.scale.bz2"
COVTYPE_URL = ("https://www.csie.ntu.edu.tw/~cjlin/libsvmtools/datasets/binary/"
               + COVTYPE_FILE)
COVTYPE_SHAPE = (581012, 54)

#: pinned hashes of the single-split local copies (file name -> sha256)
LOCAL_COPIES = {
    "ratsch_split_diabetis.mat": "ecfdf173676ad0e08ba8d79e0272135ba0bed6e8f42084445c461edcef497ab1",
    "ratsch_split_german.mat": "8b2e039f1bb9a41e590f06993c8fc45750839c3558103bd03462be7bbc95ad72",
    "ratsch_split_image.mat": "fa7f93eb15bd2a81cc193f2485f7543ff0f20ce96bd34abe36e3efb8e0e69fd9",
    "ratsch_split_waveform.mat": "627f0784ddb7006c90b1597a13f112cf125cd7816573a97a02d231e93a494e29",
    "fsvm_twonorm.mat": "1f8bce4ddad8a58030854d7611daddb9edf99cad9fe1c13b0c566d3c2c2a19cf",
    "fsvm_ringnorm.mat": "00b68226ea9a04e4d4ab89c3ca354e9073d8de8bdd70dd245f02717f8a774d74",
    "keel_banana.dat": "5bd625660e17b219ffb44019e973db014dd1726ffde309e881d3942436508b80",
}

#: generating weights of ``synthetic`` (5 features, then the intercept)
SYNTHETIC_WEIGHTS = np.array([1.5, -2.0, 0.5, 0.0, 1.0, -0.5])
SYNTHETIC_SIZE = 1000
SYNTHETIC_SEED = 20211206
TEST_FRACTION = 0.2
SPLIT_SEED = 42
DOWNLOAD_TIMEOUT_S = 30.0


class DataUnavailableError(ValueError):
    """A data file is missing, corrupt or fails its checksum."""


@dataclass(frozen=True)
class BlrData:
    """A binary classification data set split into train and test parts.

    Attributes
    ----------
    name : str
    x_train, x_test : ndarray (n, d) float64
        Raw (unstandardised) features.
    y_train, y_test : ndarray (n,) int64
        Labels in {0, 1}.
    source : str
        Where the data came from (file and hash, or the shipped copy).
    true_weights : ndarray or None
        Generating weights (features then intercept), synthetic data only.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    true_weights: np.ndarray | None = field(default=None)


# --- helpers ------------------------------------------------------------------
def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: explicit argument, else ``$GFBENCH_DATA``, else ~/.cache/gfbench."""
    if data_dir:
        return Path(data_dir).expanduser()
    env = os.environ.get("GFBENCH_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gfbench"


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _missing(name: str, filename: str, directory: Path, url: str | None, why: str) -> \
        DataUnavailableError:
    where = f"download it from {url} and put it" if url else "put it"
    return DataUnavailableError(
        f"data set {name!r}: {why}. Needed file: {filename!r}; {where} in {directory} "
        "(or set GFBENCH_DATA / the task's data_dir to the directory holding it).")


def verify_checksum(path: Path, expected: str, name: str, url: str | None) -> str:
    """Raise :class:`DataUnavailableError` unless ``path`` hashes to ``expected``."""
    actual = sha256_of(path)
    if actual != expected:
        raise _missing(name, path.name, path.parent, url,
                       f"{path} fails its sha256 check (got {actual[:12]}..., expected "
                       f"{expected[:12]}...); the file is corrupt or not the canonical copy")
    return actual


def download(url: str, target: Path, expected_sha256: str | None) -> None:
    """Fetch ``url`` to ``target`` atomically; raises ``OSError`` on failure."""
    if os.environ.get("GFBENCH_NO_DOWNLOAD"):
        raise OSError("downloads disabled by GFBENCH_NO_DOWNLOAD")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
            open(partial, "wb") as out:
        for block in iter(lambda: response.read(1 << 20), b""):
            out.write(block)
    if expected_sha256 is not None and sha256_of(partial) != expected_sha256:
        partial.unlink()
        raise OSError(f"downloaded {url} fails its sha256 check")
    partial.replace(target)


def random_split(x: np.ndarray, y: np.ndarray, split: int, name: str, source: str,
                 true_weights: np.ndarray | None = None) -> BlrData:
    """80/20 train/test split drawn from ``default_rng([42, split])``."""
    rng = np.random.default_rng([SPLIT_SEED, int(split)])
    order = rng.permutation(x.shape[0])
    n_test = int(round(TEST_FRACTION * x.shape[0]))
    test, train = order[:n_test], order[n_test:]
    return BlrData(name, x[train], y[train], x[test], y[test],
                   f"{source}; random 80/20 split, rng([42, {split}])", true_weights)


def to_binary(labels: np.ndarray, name: str) -> np.ndarray:
    """Map a two-valued label vector to {0, 1} (the larger value becomes 1)."""
    labels = np.asarray(labels).ravel()
    values = np.unique(labels)
    if values.size != 2:
        raise DataUnavailableError(f"data set {name!r}: expected two label values, "
                                   f"found {values[:5].tolist()}")
    return (labels == values[1]).astype(np.int64)


def standardise(x_train: np.ndarray, x_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Z-score with train mean/std (std 0 -> 1), then append an intercept column of ones."""
    mean = x_train.mean(axis=0)
    std = x_train.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def scale(x):
        z = (x - mean) / std
        return np.hstack([z, np.ones((x.shape[0], 1))])

    return scale(x_train), scale(x_test)


def pooled_split(data: BlrData, split: int) -> BlrData:
    """The original study's split: all rows pooled, then one random split, train ⌊0.8 n⌋.

    The study pooled each data set and split it once at random (torch seed 42);
    here the permutation comes from ``default_rng([42, split])``: the row order
    of our copies differs from its files, so its exact permutation cannot be
    reproduced, only its sizes.
    """
    x = np.vstack([data.x_train, data.x_test])
    y = np.concatenate([data.y_train, data.y_test])
    order = np.random.default_rng([SPLIT_SEED, int(split)]).permutation(x.shape[0])
    n_train = int((1.0 - TEST_FRACTION) * x.shape[0])
    train, test = order[:n_train], order[n_train:]
    return BlrData(data.name, x[train], y[train], x[test], y[test],
                   f"{data.source}; rows pooled, random {n_train}/{test.size} split, "
                   f"rng([42, {split}])", data.true_weights)


# --- offline data sets ----------------------------------------------------------
def load_breast_cancer_data(split: int) -> BlrData:
    """scikit-learn's Wisconsin breast-cancer data (malignant = 0, benign = 1)."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return random_split(np.asarray(bunch.data, dtype=np.float64),
                        np.asarray(bunch.target, dtype=np.int64), split, "breast_cancer",
                        "sklearn.datasets.load_breast_cancer (shipped)")


def load_synthetic_data(split: int) -> BlrData:
    """Gaussian features with Bernoulli-logistic labels from :data:`SYNTHETIC_WEIGHTS`."""
    rng = np.random.default_rng(SYNTHETIC_SEED)
    d = SYNTHETIC_WEIGHTS.size - 1
    x = rng.standard_normal((SYNTHETIC_SIZE, d))
    logits = x @ SYNTHETIC_WEIGHTS[:d] + SYNTHETIC_WEIGHTS[d]
    y = (rng.uniform(size=SYNTHETIC_SIZE) < 1.0 / (1.0 + np.exp(-logits))).astype(np.int64)
    return random_split(x, y, split, "synthetic",
                        f"synthetic, rng({SYNTHETIC_SEED}), weights {SYNTHETIC_WEIGHTS.tolist()}",
                        true_weights=SYNTHETIC_WEIGHTS.copy())


# --- Rätsch benchmarks ------------------------------------------------------------
def _loadmat(path: Path, name: str):
    from scipy.io import loadmat

    try:
        return loadmat(str(path), squeeze_me=True, struct_as_record=False)
    except Exception as exc:  # scipy raises several types for damaged files
        raise _missing(name, path.name, path.parent, None,
                       f"{path} cannot be read as a MATLAB file ({type(exc).__name__}: {exc})") \
            from None


def parse_ratsch_benchmarks(path: Path, name: str, split: int, source: str) -> BlrData:
    """One split of ``name`` from a ``benchmarks.mat``-layout file.

    Each data set is a struct with fields ``x (n, d)``, ``t (n,)`` (±1),
    ``train (splits, n_train)`` and ``test (splits, n_test)`` holding 1-based
    row indices.
    """
    mat = _loadmat(path, name)
    if name not in mat:
        raise _missing(name, path.name, path.parent, BENCHMARKS_URL,
                       f"{path} has no data set {name!r}")
    entry = mat[name]
    x = np.asarray(entry.x, dtype=np.float64)
    y = to_binary(entry.t, name)
    train, test = np.atleast_2d(entry.train), np.atleast_2d(entry.test)
    if not 0 <= split < train.shape[0]:
        raise ValueError(f"data set {name!r}: split must be in [0, {train.shape[0] - 1}] "
                         f"for {path.name}, got {split}")
    tr = np.asarray(train[split], dtype=np.int64) - 1
    te = np.asarray(test[split], dtype=np.int64) - 1
    return BlrData(name, x[tr], y[tr], x[te], y[te], f"{source}, split {split}")


def _local_copy(name: str, directory: Path, split: int) -> BlrData | None:
    """A single-split local copy of a Rätsch data set, or None when absent."""
    for filename in (f"ratsch_split_{name}.mat", f"fsvm_{name}.mat", f"keel_{name}.dat"):
        path = directory / filename
        if not path.is_file():
            continue
        expected = LOCAL_COPIES.get(filename)
        digest = verify_checksum(path, expected, name, None) if expected else sha256_of(path)
        source = f"{path} (sha256 {digest[:12]})"
        if filename.startswith("ratsch_split_"):
            if split != 0:
                raise ValueError(f"data set {name!r}: {filename} holds one split only; "
                                 f"use split=0 or provide {BENCHMARKS_FILE}")
            mat = _loadmat(path, name)
            return BlrData(name, np.asarray(mat["X_tr"], dtype=np.float64),
                           to_binary(mat["T_tr"], name),
                           np.asarray(mat["X_tst"], dtype=np.float64),
                           to_binary(mat["T_tst"], name), f"{source}, its own split")
        if filename.startswith("fsvm_"):
            mat = _loadmat(path, name)
            x = np.asarray(mat["X"], dtype=np.float64).T  # stored features x samples
            return random_split(x, to_binary(mat["Y"], name), split, name, source)
        table = _read_csv(path, name)
        return random_split(table[:, :-1], to_binary(table[:, -1], name), split, name, source)
    return None


def _read_csv(path: Path, name: str) -> np.ndarray:
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise _missing(name, path.name, path.parent, None,
                       f"{path} is not a numeric CSV ({exc})") from None
    return table


def load_ratsch(name: str, split: int, directory: Path) -> BlrData:
    """A Rätsch benchmark: canonical file, else a local copy, else a download."""
    path = directory / BENCHMARKS_FILE
    if path.is_file():
        digest = verify_checksum(path, BENCHMARKS_SHA256, name, BENCHMARKS_URL)
        return parse_ratsch_benchmarks(path, name, split, f"{path} (sha256 {digest[:12]})")
    local = _local_copy(name, directory, split)
    if local is not None:
        return local
    try:
        download(BENCHMARKS_URL, path, BENCHMARKS_SHA256)
    except OSError as exc:
        raise _missing(name, BENCHMARKS_FILE, directory, BENCHMARKS_URL,
                       f"not found in {directory} and the download failed ({exc})") from None
    return parse_ratsch_benchmarks(path, name, split, f"{path} (downloaded, sha256 verified)")


# --- covtype ------------------------------------------------------------------------
def parse_covtype(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Features ``(581012, 54)`` and labels {0, 1} from the LIBSVM binary file."""
    from sklearn.datasets import load_svmlight_file

    opener = bz2.open if path.suffix == ".bz2" else open
    try:
        with opener(path, "rb") as handle:
            x, y = load_svmlight_file(handle, n_features=COVTYPE_SHAPE[1])
    except (OSError, ValueError, EOFError) as exc:
        raise _missing("covtype", path.name, path.parent, COVTYPE_URL,
                       f"{path} is corrupt or not in LIBSVM format ({exc})") from None
    if x.shape != COVTYPE_SHAPE:
        raise _missing("covtype", path.name, path.parent, COVTYPE_URL,
                       f"{path} has shape {x.shape}, expected {COVTYPE_SHAPE}")
    return np.asarray(x.toarray(), dtype=np.float64), to_binary(y, "covtype")


def load_covtype(split: int, directory: Path) -> BlrData:
    """LIBSVM covtype (binary), compressed or not, downloaded when absent."""
    candidates = [directory / COVTYPE_FILE, directory / COVTYPE_FILE[:-4]]
    path = next((p for p in candidates if p.is_file()), None)
    if path is None:
        path = candidates[0]
        try:
            download(COVTYPE_URL, path, None)
        except OSError as exc:
            raise _missing("covtype", COVTYPE_FILE, directory, COVTYPE_URL,
                           f"not found in {directory} and the download failed ({exc})") \
                from None
    x, y = parse_covtype(path)
    return random_split(x, y, split, "covtype", f"{path} (sha256 {sha256_of(path)[:12]}, "
                                                "structure-checked; no published checksum)")


# --- entry point ---------------------------------------------------------------------
def load_dataset(name: str, split: int = 0, data_dir: str | os.PathLike | None = None) -> BlrData:
    """Load ``name`` (one of :data:`DATASETS`) at ``split``; see the module docstring."""
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if not isinstance(split, (int, np.integer)) or isinstance(split, bool) or split < 0:
        raise ValueError(f"split must be an integer >= 0, got {split!r}")
    if name == "breast_cancer":
        return load_breast_cancer_data(split)
    if name == "synthetic":
        return load_synthetic_data(split)
    directory = resolve_data_dir(data_dir)
    if name == "covtype":
        return load_covtype(split, directory)
    return load_ratsch(name, split, directory)
