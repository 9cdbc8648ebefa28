"""The training loop: logs, budgets, mini-batches, checkpoints and bit-identical resumption."""
import json

import numpy as np
import pytest

from refopt import tree as T
from refopt.runner import Interrupted, RunConfig, load_checkpoint, run


def _leaves_equal(a, b):
    return all(np.array_equal(x, y) for x, y in zip(T.leaves(a), T.leaves(b)))


def test_run_decreases_loss_and_logs(tmp_path):
    log = tmp_path / "log.jsonl"
    res = run(RunConfig("sgd", {"lr": 0.5, "momentum": 0.9}, "synthetic_mlp", steps=15), log_path=str(log))
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    assert len(lines) == len(res.history) == 15
    assert lines[-1]["train_loss"] < lines[0]["train_loss"]
    for key in ("step", "loss", "grad_norm", "step_norm", "lr", "nfev", "ngev", "elapsed", "skipped"):
        assert key in lines[0]
    assert [r["ngev"] for r in lines] == list(range(1, 16))  # one gradient per SGD step


def test_target_loss_stops_early():
    res = run(RunConfig("sgd", {"lr": 0.5, "momentum": 0.9}, "synthetic_mlp", steps=500, target_loss=0.5))
    assert res.status == "target_reached" and len(res.history) < 500
    assert res.final_loss <= 0.5


@pytest.mark.parametrize("batch_size", [None, 64])
def test_resume_is_bit_identical(tmp_path, batch_size):
    cfg = RunConfig("sgd", {"lr": 0.3, "momentum": 0.9, "nesterov": True}, "synthetic_mlp", steps=12,
                    batch_size=batch_size, seed=3)
    full = run(cfg)
    ckpt = tmp_path / "c.npz"
    first = RunConfig(**{**cfg.__dict__})
    first.steps = 7
    run(first, checkpoint_path=str(ckpt), checkpoint_every=7)
    resumed = run(cfg, resume=str(ckpt))
    assert _leaves_equal(full.params, resumed.params)
    assert _leaves_equal(full.state.velocity, resumed.state.velocity)
    assert [r["loss"] for r in full.history] == [r["loss"] for r in resumed.history]


def test_interrupt_writes_checkpoint_that_resumes_identically(tmp_path):
    cfg = RunConfig("sgd", {"lr": 0.3, "momentum": 0.5}, "synthetic_mlp", steps=10, seed=1)
    full = run(cfg)
    ckpt = tmp_path / "int.npz"

    def interrupt(rec):
        if rec["step"] == 4:
            raise KeyboardInterrupt

    with pytest.raises(Interrupted) as info:
        run(cfg, checkpoint_path=str(ckpt), progress=interrupt)
    assert info.value.step == 4
    step, params, state, history, counts = load_checkpoint(str(ckpt), cfg)
    assert step == 4 and len(history) == 4 and counts.ngev == 4
    resumed = run(cfg, resume=str(ckpt))
    assert _leaves_equal(full.params, resumed.params)


def test_checkpoint_mismatch_is_refused(tmp_path):
    ckpt = tmp_path / "c.npz"
    cfg = RunConfig("sgd", {"lr": 0.3}, "synthetic_mlp", steps=2)
    run(cfg, checkpoint_path=str(ckpt), checkpoint_every=1)
    for change, word in [({"problem": "logistic"}, "problem"), ({"hyperparameters": {"lr": 0.2}}, "hyperparameters"),
                         ({"seed": 5}, "seed"), ({"batch_size": 32}, "batch_size")]:
        other = RunConfig(**{**cfg.__dict__, **change})
        with pytest.raises(ValueError, match=word):
            run(other, resume=str(ckpt))


def test_checkpoint_from_another_version_is_refused(tmp_path, monkeypatch):
    import refopt.runner as R
    ckpt = tmp_path / "c.npz"
    cfg = RunConfig("sgd", {"lr": 0.3}, "synthetic_mlp", steps=2)
    run(cfg, checkpoint_path=str(ckpt), checkpoint_every=1)
    monkeypatch.setattr(R, "__version__", "99.0")
    with pytest.raises(ValueError, match="version|refopt 0"):
        run(cfg, resume=str(ckpt))


def test_not_a_checkpoint(tmp_path):
    bad = tmp_path / "x.npz"
    np.savez(bad, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a refopt"):
        run(RunConfig("sgd", {}, "synthetic_mlp", steps=1), resume=str(bad))


def test_bad_batch_size():
    with pytest.raises(ValueError, match="batch_size"):
        run(RunConfig("sgd", {}, "synthetic_mlp", steps=1, batch_size=0))


def test_divergence_is_reported():
    from refopt.nn import MLP, Gaussian
    from refopt.problems.registry import NetworkProblem
    g = np.random.default_rng(0)
    prob = NetworkProblem("lsq", MLP([3, 1]), Gaussian(), g.standard_normal((10, 3)), g.standard_normal((10, 1)))
    res = run(RunConfig("sgd", {"lr": 1e100}, "lsq", steps=20), problem=prob)
    assert res.status == "diverged" and "loss" in res.message


def test_function_problem_converges_and_stops():
    res = run(RunConfig("lbfgs", {}, "rosenbrock", steps=500, gtol=1e-10))
    assert res.status == "converged" and len(res.history) < 500
    np.testing.assert_allclose(T.ravel(res.params), np.ones(2), atol=1e-8)


def test_function_problem_has_no_minibatches():
    with pytest.raises(ValueError, match="mini-batches"):
        run(RunConfig("lbfgs", {}, "rosenbrock", steps=5, batch_size=2))


def test_failed_checkpoint_write_keeps_the_previous_one(tmp_path, monkeypatch):
    """Checkpoints are written to a temporary file and renamed: a failed write leaves the last good one."""
    import refopt.serialize as S
    ckpt = tmp_path / "c.npz"
    cfg = RunConfig("sgd", {"lr": 0.3}, "synthetic_mlp", steps=2)
    run(cfg, checkpoint_path=str(ckpt), checkpoint_every=1)
    before = ckpt.read_bytes()
    real = S.np.savez

    def fail_midway(fh, **arrays):
        real(fh, **{k: v for k, v in list(arrays.items())[:1]})  # some bytes reach the disk ...
        raise OSError("disk full")                                 # ... then the write fails
    monkeypatch.setattr(S.np, "savez", fail_midway)
    with pytest.raises(OSError):
        run(RunConfig("sgd", {"lr": 0.3}, "synthetic_mlp", steps=4), checkpoint_path=str(ckpt), checkpoint_every=1)
    assert ckpt.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["c.npz"]
