"""Bayesian logistic regression: data loading, potential, minibatches, metrics."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.io import savemat

from metrics.predictive import TEST_ACCURACY, TEST_LOGLIK, predictive_log_probs
from solvers.base import RunContext, SolverResult
from solvers.em import EulerMaruyama
from tasks import blr_data
from tasks.base import Reference
from tasks.bayesian_logreg import BayesianLogReg, weights_from_state
from tasks.blr_data import DataUnavailableError, load_dataset, standardise

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "blr"


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Never touch the network in tests."""
    monkeypatch.setenv("GFBENCH_NO_DOWNLOAD", "1")


def make(dataset="synthetic", **params):
    return BayesianLogReg(np.random.SeedSequence(0), dataset=dataset, **params)


# --- data ---------------------------------------------------------------------
def test_offline_data_sets_load_with_disjoint_80_20_splits():
    for name, n in (("breast_cancer", 569), ("synthetic", 1000)):
        data = load_dataset(name)
        assert data.x_train.shape[0] + data.x_test.shape[0] == n
        assert data.x_test.shape[0] == round(0.2 * n)
        assert set(np.unique(data.y_train)) == {0, 1}
    other = load_dataset("synthetic", split=1)
    assert not np.array_equal(other.x_test, load_dataset("synthetic").x_test)


def test_standardisation_uses_train_statistics_only():
    rng = np.random.default_rng(0)
    x_train = rng.normal(3.0, 2.0, size=(200, 3))
    x_test = rng.normal(5.0, 2.0, size=(50, 3))
    z_train, z_test = standardise(x_train, x_test)
    np.testing.assert_allclose(z_train[:, :3].mean(axis=0), 0.0, atol=1e-12)
    np.testing.assert_allclose(z_train[:, :3].std(axis=0), 1.0, atol=1e-12)
    np.testing.assert_allclose(z_test[:, :3], (x_test - x_train.mean(0)) / x_train.std(0))
    assert np.all(z_train[:, 3] == 1.0) and np.all(z_test[:, 3] == 1.0)


def test_missing_file_raises_one_clear_error(tmp_path):
    with pytest.raises(DataUnavailableError) as info:
        load_dataset("splice", data_dir=tmp_path)
    message = str(info.value)
    assert "benchmarks.mat" in message and str(tmp_path) in message
    assert isinstance(info.value, ValueError)
    with pytest.raises(DataUnavailableError, match="covtype.libsvm.binary.scale"):
        load_dataset("covtype", data_dir=tmp_path)


def test_data_dir_defaults_to_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GFBENCH_DATA", str(tmp_path))
    assert blr_data.resolve_data_dir(None) == tmp_path
    assert blr_data.resolve_data_dir("/elsewhere") == Path("/elsewhere")


def test_canonical_file_with_wrong_checksum_is_rejected(tmp_path):
    (tmp_path / "benchmarks.mat").write_bytes(b"not a mat file")
    with pytest.raises(DataUnavailableError, match="sha256"):
        load_dataset("german", data_dir=tmp_path)


def test_corrupt_local_copy_is_rejected(tmp_path):
    (tmp_path / "keel_banana.dat").write_text("1.0,2.0,1.0\n")
    with pytest.raises(DataUnavailableError, match="sha256"):
        load_dataset("banana", data_dir=tmp_path)


def test_corrupt_covtype_is_rejected(tmp_path):
    (tmp_path / "covtype.libsvm.binary.scale.bz2").write_bytes(b"garbage")
    with pytest.raises(DataUnavailableError, match="corrupt"):
        load_dataset("covtype", data_dir=tmp_path)


def test_benchmarks_layout_parser_uses_one_based_split_indices(tmp_path):
    x = np.arange(12.0).reshape(6, 2)
    t = np.array([1, -1, 1, -1, 1, -1])
    entry = {"x": x, "t": t, "train": np.array([[1, 2, 3, 4], [3, 4, 5, 6]]),
             "test": np.array([[5, 6], [1, 2]])}
    path = tmp_path / "fake.mat"
    savemat(path, {"german": entry})
    data = blr_data.parse_ratsch_benchmarks(path, "german", 1, "fake")
    np.testing.assert_array_equal(data.x_test, x[:2])
    np.testing.assert_array_equal(data.y_train, [1, 0, 1, 0])
    with pytest.raises(ValueError, match="split"):
        blr_data.parse_ratsch_benchmarks(path, "german", 2, "fake")


@pytest.mark.parametrize("name,n_features", [("diabetis", 8), ("german", 20), ("image", 18),
                                             ("waveform", 21), ("twonorm", 20),
                                             ("ringnorm", 20), ("banana", 2)])
def test_local_copies_load(name, n_features):
    if not SHARED.is_dir():
        pytest.skip(f"local data copies absent ({SHARED})")
    data = load_dataset(name, data_dir=SHARED)
    assert data.x_train.shape[1] == n_features == data.x_test.shape[1]
    assert set(np.unique(data.y_test)) == {0, 1}
    assert str(SHARED) in data.source


# --- potential ---------------------------------------------------------------------
@pytest.mark.parametrize("state", ["centred", "non_centred"])
def test_gradients_match_finite_differences_and_autograd(state):
    task = make(state=state)
    x = task.sample_initial(4, np.random.default_rng(1))
    x[:, -1] = np.log([0.5, 1.0, 2.0, 5.0])  # moderate α keeps the check well scaled
    g = task.grad_potential(x)
    eps = 1e-6
    fd = np.stack([(task.potential(x + eps * e) - task.potential(x - eps * e)) / (2 * eps)
                   for e in np.eye(task.dim)], axis=1)
    np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-4)
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(task.potential_torch(xt).numpy(), task.potential(x), rtol=1e-10)
    np.testing.assert_allclose(task.grad_potential_torch(xt).numpy(), g, rtol=1e-9, atol=1e-9)
    auto = super(BayesianLogReg, task).grad_potential_torch(xt).numpy()
    np.testing.assert_allclose(auto, g, rtol=1e-9, atol=1e-9)


def test_minibatch_estimates_are_unbiased():
    task = make()
    x = torch.from_numpy(task.sample_initial(3, np.random.default_rng(2)))
    full = task.grad_potential_torch(x).numpy()
    # equal-size batches partitioning the data average exactly to the full gradient
    order = np.random.default_rng(3).permutation(task.n_train)
    parts = np.split(order, 8)
    mean = np.mean([task.grad_potential_torch(x, p).numpy() for p in parts], axis=0)
    np.testing.assert_allclose(mean, full, rtol=1e-10, atol=1e-8)
    phi = np.mean([task.potential_torch(x, p).numpy() for p in parts], axis=0)
    np.testing.assert_allclose(phi, task.potential(x.numpy()), rtol=1e-10)
    batch = task.data_batch(50, np.random.default_rng(4))
    assert batch.shape == (50,) and np.unique(batch).size == 50
    assert task.data_batch(10**6, np.random.default_rng(4)).size == task.n_train


def test_prior_sampler_matches_its_density():
    task = make()
    x = task.sample_initial(100_000, np.random.default_rng(5))
    alpha = np.exp(x[:, -1])
    assert alpha.mean() == pytest.approx(100.0, rel=0.02)  # Gamma(1, rate 0.01)
    # w | α ~ N(0, 1/α): the scaled weights are standard normal
    assert np.std(x[:, 0] * np.sqrt(alpha)) == pytest.approx(1.0, rel=0.02)
    # 1-D check of the η-marginal's Jacobian: density of η = log α, α ~ Exp(0.01)
    eta = np.array([2.0, 4.6, 6.0])
    expected = np.log(0.01) + eta - 0.01 * np.exp(eta)
    z = np.zeros((3, task.n_weights))
    gauss_at_zero = 0.5 * task.n_weights * (eta - np.log(2 * np.pi))
    np.testing.assert_allclose(task.log_density_initial(np.column_stack([z, eta])),
                               expected + gauss_at_zero)


def test_non_centred_state_is_the_same_model():
    centred, non_centred = make(), make(state="non_centred")
    x = non_centred.sample_initial(5, np.random.default_rng(8))
    p = non_centred.n_weights
    w = weights_from_state(x, p, "non_centred")
    np.testing.assert_allclose(w, x[:, :p] * np.exp(-x[:, -1:] / 2))
    xc = np.hstack([w, x[:, -1:]])
    # w = v e^{−η/2} has Jacobian |∂w/∂v| = e^{−pη/2}: densities differ by it, and
    # only by it, so Φ (and the prior) carry the same posterior on w
    np.testing.assert_allclose(non_centred.potential(x),
                               centred.potential(xc) + 0.5 * p * x[:, -1], rtol=1e-12)
    np.testing.assert_allclose(non_centred.log_density_initial(x),
                               centred.log_density_initial(xc) - 0.5 * p * x[:, -1],
                               rtol=1e-12)
    # the prior sampler: v ~ N(0, I) independent of η, and w's law matches the centred one
    draws = non_centred.sample_initial(100_000, np.random.default_rng(9))
    assert np.std(draws[:, :p]) == pytest.approx(1.0, rel=0.01)
    assert abs(np.corrcoef(np.abs(draws[:, 0]), draws[:, -1])[0, 1]) < 0.02
    w_nc = weights_from_state(draws, p, "non_centred")[:, 0]
    w_c = centred.sample_initial(100_000, np.random.default_rng(10))[:, 0]
    levels = [0.1, 0.25, 0.5, 0.75, 0.9]
    np.testing.assert_allclose(np.quantile(np.abs(w_nc), levels),
                               np.quantile(np.abs(w_c), levels), rtol=0.05)
    assert non_centred.reference(1.0).extras["state"] == "non_centred"


def test_metrics_read_weights_through_the_state():
    task = make(state="non_centred")
    ref = task.reference(1.0)
    x = task.sample_initial(64, np.random.default_rng(11))
    x[:, -1] = np.log(4.0)  # w = v / 2
    halved = x.copy()
    halved[:, :-1] /= 2.0
    result = SolverResult(samples=x)
    as_centred = SolverResult(samples=halved)
    centred_ref = make().reference(1.0)
    rng = np.random.default_rng
    got = TEST_LOGLIK.fn(result, ref, rng=rng(0))
    want = TEST_LOGLIK.fn(as_centred, centred_ref, rng=rng(0))
    assert np.isfinite(got.value) and got.value == pytest.approx(want.value, rel=1e-12)
    assert got.se == pytest.approx(want.se, rel=1e-9)


def test_reference_has_no_ground_truth_but_carries_the_test_set():
    task = make()
    ref = task.reference(1.0)
    assert ref.sample is None and ref.log_density is None
    assert "no ground-truth" in ref.provenance
    assert ref.extras["z_test"].shape == (200, 6) and ref.extras["n_weights"] == 6
    assert BayesianLogReg.primary_metric == "test_loglik"


def test_study_protocol_pools_rows_drops_the_intercept_and_uses_rate_100():
    if not SHARED.is_dir():
        pytest.skip(f"local data copies absent ({SHARED})")
    ours = make("german", data_dir=str(SHARED))
    study = make("german", data_dir=str(SHARED), protocol="study")
    # the Rätsch copy holds 700/300; the study pools the 1000 rows and splits 800/200
    assert (ours.n_train, ours.z_test.shape[0]) == (700, 300)
    assert (study.n_train, study.z_test.shape[0]) == (800, 200)
    assert study.n_weights == ours.n_weights - 1 == 20  # no intercept column
    raw = load_dataset("german", data_dir=SHARED)
    pooled = np.vstack([raw.x_train, raw.x_test])
    both = np.vstack([study.z_train, study.z_test])  # features as stored, every row once
    np.testing.assert_array_equal(np.sort(both, axis=0), np.sort(pooled, axis=0))
    assert np.exp(study.sample_initial(100_000, np.random.default_rng(0))[:, -1]).mean() \
        == pytest.approx(0.01, rel=0.02)  # Gamma(1, rate 100)
    other = make("german", data_dir=str(SHARED), protocol="study", split=1)
    assert not np.array_equal(other.z_test, study.z_test)
    # Φ, its gradient and the torch versions agree under this protocol too
    x = study.sample_initial(3, np.random.default_rng(1))
    x[:, -1] = np.log([0.5, 1.0, 2.0])
    eps = 1e-6
    fd = np.stack([(study.potential(x + eps * e) - study.potential(x - eps * e)) / (2 * eps)
                   for e in np.eye(study.dim)], axis=1)
    np.testing.assert_allclose(study.grad_potential(x), fd, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(study.potential_torch(torch.from_numpy(x)).numpy(),
                               study.potential(x), rtol=1e-10)


def test_study_protocol_reads_diabetis_as_libsvm_diabetes_scale():
    if not SHARED.is_dir():
        pytest.skip(f"local data copies absent ({SHARED})")
    study = make("diabetis", data_dir=str(SHARED), protocol="study")
    both = np.vstack([study.z_train, study.z_test])
    np.testing.assert_allclose(both.min(axis=0), -1.0)
    np.testing.assert_allclose(both.max(axis=0), 1.0)
    # a per-feature increasing affine map of the stored features: z-scores are unchanged
    raw = load_dataset("diabetis", data_dir=SHARED)
    stored = np.sort(np.vstack([raw.x_train, raw.x_test]), axis=0)

    def zscore(a):
        return (a - a.mean(axis=0)) / a.std(axis=0)

    np.testing.assert_allclose(zscore(np.sort(both, axis=0)), zscore(stored), atol=1e-10)


@pytest.mark.parametrize("params", [{"dataset": "mnist"}, {"split": -1}, {"split": 1.5},
                                    {"data_dir": 3}, {"protocol": "mine"},
                                    {"state": "whitened"},
                                    {"dataset": "synthetic", "protocol": "study"}])
def test_invalid_parameters_are_rejected(params):
    with pytest.raises(ValueError):
        BayesianLogReg.validate_params(params)


# --- predictive metrics ---------------------------------------------------------------
def test_predictive_probabilities_average_over_samples():
    w = np.array([[2.0], [0.0]])
    z = np.array([[1.0], [1.0]])
    y = np.array([1, 0])
    p1 = 0.5 * (1 / (1 + np.exp(-2.0)) + 0.5)
    np.testing.assert_allclose(predictive_log_probs(w, z, y), np.log([p1, 1 - p1]))


def test_metrics_prefer_langevin_posterior_samples_to_prior_draws():
    task = make()
    ref = task.reference(1.0)
    rng = np.random.default_rng(6)
    em = EulerMaruyama(n_particles=300, dt=1e-3)
    em.setup(task, [0.5], np.random.SeedSequence(7), RunContext())
    posterior = em.run()[0.5]
    prior = SolverResult(samples=task.sample_initial(300, rng))
    assert TEST_ACCURACY.lower_is_better is False and TEST_LOGLIK.lower_is_better is False
    acc_post = TEST_ACCURACY(posterior, ref, rng=rng).value
    ll_post = TEST_LOGLIK(posterior, ref, rng=rng).value
    assert acc_post > 0.8
    assert ll_post > TEST_LOGLIK(prior, ref, rng=rng).value + 0.1
    assert TEST_ACCURACY.applies(posterior, ref)
    assert not TEST_ACCURACY.applies(posterior, Reference(t=1.0))


def test_posterior_mean_recovers_the_generating_direction():
    task = make()
    em = EulerMaruyama(n_particles=200, dt=1e-3, batch_size=100)
    em.setup(task, [0.5], np.random.SeedSequence(8), RunContext())
    w = em.run()[0.5].samples[:, :-1].mean(axis=0)
    # standardisation rescales each weight by the train std; undo it to compare
    std = task.data.x_train.std(axis=0)
    raw = w[:-1] / std
    truth = blr_data.SYNTHETIC_WEIGHTS[:-1]
    cosine = raw @ truth / np.linalg.norm(raw) / np.linalg.norm(truth)
    assert cosine > 0.97
