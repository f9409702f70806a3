"""Claims and run files that lie: a pid alive again as another process, a claim that is a
directory, run 'files' that are links to devices, FIFOs or directories."""
from __future__ import annotations

import json
import os
import socket

from execution import store


def _claim(out, run_id, **owner):
    store.runs_dir(out).mkdir(parents=True, exist_ok=True)
    path = store.runs_dir(out) / f".{run_id}.claim"
    path.write_text(json.dumps({"host": socket.gethostname(), **owner}))
    return path


def test_a_claim_whose_pid_lives_again_as_another_process_is_stale(tmp_path):
    # pid 1 is alive (init, or the container's first process) but did not write this claim
    path = _claim(tmp_path, "a", pid=1, start="12345678", boot=store._boot_id())
    assert store.process_start(1) not in ("", "12345678")
    assert store._claim_is_stale(path)
    assert store.Claim.take(tmp_path, "a") is not None
    # the same pid with its real start time, on this boot: a live owner
    path = _claim(tmp_path, "b", pid=os.getpid(), start=store.process_start(os.getpid()),
                  boot=store._boot_id())
    assert not store._claim_is_stale(path)
    assert store.Claim.take(tmp_path, "b") is None
    # a claim from before a restart (another boot id) is stale whatever its pid
    path = _claim(tmp_path, "c", pid=os.getpid(), start=store.process_start(os.getpid()),
                  boot="another-boot")
    assert store._claim_is_stale(path)


def test_a_claim_path_that_is_a_directory_does_not_crash_the_runner(tmp_path):
    (store.runs_dir(tmp_path) / ".d.claim").mkdir(parents=True)
    claim = store.Claim.take(tmp_path, "d")
    assert claim is not None
    claim.release()  # cannot remove a directory: quietly leaves it


def test_links_fifos_and_directories_in_runs_are_never_read(tmp_path):
    runs = store.runs_dir(tmp_path)
    runs.mkdir(parents=True)
    (runs / "zero.json").symlink_to("/dev/zero")
    os.mkfifo(runs / "fifo.json")
    (runs / "dir.json").mkdir()
    (runs / "big.json").write_bytes(b" " * (store.MAX_RUN_BYTES + 1))
    valid, corrupt = store.scan(tmp_path)  # returns at once: nothing is opened
    assert valid == {} and {p.name for p in corrupt} == {"zero.json", "fifo.json", "dir.json",
                                                          "big.json"}


def test_the_reference_cache_is_checksummed_and_recomputed_when_it_lies(tmp_path):
    import numpy as np

    from metrics.base import _load, _save

    path = tmp_path / "entry.npz"
    value = {"x": np.arange(6.0).reshape(3, 2), "log_q": np.ones(3)}
    _save(path, value)
    loaded = _load(path)
    assert loaded is not None and np.array_equal(loaded["x"], value["x"])
    # a valid .npz whose arrays were zeroed in place: fails its checksum, never trusted
    with np.load(path) as data:
        tampered = {k: data[k] for k in data.files}
    tampered["x"] = np.zeros_like(tampered["x"])
    np.savez(path, **tampered)
    assert _load(path) is None
    path.write_bytes(b"garbage")
    assert _load(path) is None


def test_a_cache_path_that_is_a_file_costs_only_the_disk_cache(gfbench, tmp_path):
    out = tmp_path / "r"
    out.mkdir()
    (out / ".cache").write_text("not a directory")
    code, _, err = gfbench("run", "--task", "ou", "-P", "ou.dim=1", "--times", "0.2",
                           "--seeds", "1", "--solver", "exact", "-P", "exact.n_samples=256",
                           "--metrics", "energy", "--quiet", "--no-report", "--out", out)
    assert code == 0, err
    assert set(store.load(out)["status"]) == {"ok"}


def test_a_plugin_index_of_the_wrong_shape_or_naming_a_deleted_module_is_rebuilt(
        tmp_path, monkeypatch):
    from execution import registry

    monkeypatch.setenv("GFBENCH_CACHE", str(tmp_path))
    registry.index.cache_clear()
    try:
        good = registry.index()
        path = tmp_path / f"index-{registry._sources_digest()}.json"
        assert path.is_file()
        for bad in ([1, 2, 3], {"tasks": [], "solvers": {}, "metrics": {}},
                    {**good, "tasks": {**good["tasks"], "gone": {
                        **good["tasks"]["ou"], "module": "tasks.deleted_module"}}}):
            path.write_text(json.dumps(bad))
            registry.index.cache_clear()
            assert registry.index() == good
            assert json.loads(path.read_text()) == good  # rewritten
    finally:
        registry.index.cache_clear()


def test_a_waiting_runner_says_which_runs_it_waits_for_and_who_holds_them(tmp_path, capsys):
    from execution.parallel import LineProgress, _report_waiting

    _claim(tmp_path, "r1", pid=4242, start="1", boot=store._boot_id())
    _claim(tmp_path, "r2", pid=4242, start="1", boot=store._boot_id())
    import io

    stream = io.StringIO()
    _report_waiting(LineProgress(2, stream=stream), tmp_path, ["r1", "r2"])
    text = stream.getvalue()
    assert "waiting for 2 run(s)" in text and f"2 by pid 4242 on {socket.gethostname()}" in text
