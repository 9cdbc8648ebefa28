"""The benchmark scripts' arithmetic and plumbing (scripts/): flop counts against hand counts, the shared
timing and argument helpers, bench_all's summary and markdown, and bad inputs refused by the parsers.
Nothing here is timed: speed is measured by the scripts themselves (CONTRIBUTING.md, "Benchmarks")."""
import os
import sys

import pytest

SCRIPTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "scripts")


@pytest.fixture(scope="module")
def S():
    """The scripts as modules; the environment is restored after their imports (bench_adaptive presets the
    BLAS thread variables where they are unset)."""
    saved = dict(os.environ)
    sys.path.insert(0, SCRIPTS)
    try:
        import _bench
        import bench_adaptive
        import bench_all
        import bench_autodiff
        import bench_cnn
        import bench_kfac
        import bench_quasi_newton
        import tune_compare
    finally:
        sys.path.remove(SCRIPTS)
        os.environ.clear()
        os.environ.update(saved)
    return type("Scripts", (), dict(B=_bench, adaptive=bench_adaptive, all=bench_all, autodiff=bench_autodiff,
                                    cnn=bench_cnn, kfac=bench_kfac, qn=bench_quasi_newton, tune=tune_compare))


# One small MLP, counted by hand: sizes 3-4-2, batch 5. Forward 2·5·3·4 + 2·5·4·2 = 120 + 80, weight gradients
# the same 200, input gradient of layer 2 only 2·5·2·4 = 80: 480 in all.
SIZES, BATCH = (3, 4, 2), 5


def test_mlp_flops_by_hand(S):
    assert S.B.mlp_flops(SIZES, BATCH) == {"forward": 200.0, "weight_grads": 200.0, "input_grads": 80.0,
                                           "gradient": 480.0}
    assert S.B.gemm(2, 3, 4) == 48.0 and S.B.syrk(5, 4) == 80.0
    assert S.B.eigh_flops(2) == 72.0 and S.B.inv_flops(2) == 16.0


def test_kfac_bound_by_hand(S):
    # statistics: sampled sweep 80 + āᵀā syrk (4², 5²)·5 = 80 + 125 + gᵀg (4², 2²)·5 = 80 + 20  -> 385
    # preconditioning: a = 4, n = 4: 2·4·4·4 + 2·4·4·4 = 256; a = 5, n = 2: 2·5·5·2 + 2·5·2·2 = 140 -> 396
    # factor sizes 4, 5, 4, 2: inverses 2·(64 + 125 + 64 + 8) = 522, eigh 9·261 = 2349
    dec = {"inverse": 4.0, "eig": 8.0}   # ms per refresh; the SGD step 2 ms
    assert S.kfac.factor_sizes(SIZES) == [4, 5, 4, 2]
    bound, flops = S.kfac.kfac_bound((1, 10, "inverse"), 2.0, dec, sizes=SIZES, batch=BATCH)
    assert bound == pytest.approx((480 + 385 + 396) / 480 + 4.0 / 10 / 2.0, rel=1e-14)
    assert flops == pytest.approx(480 + 385 + 396 + 52.2, rel=1e-14)
    bound, flops = S.kfac.kfac_bound((1, 10, "eig"), 2.0, dec, sizes=SIZES, batch=BATCH)
    assert bound == pytest.approx((480 + 385 + 2 * 396) / 480 + 8.0 / 10 / 2.0, rel=1e-14)
    assert flops == pytest.approx(480 + 385 + 2 * 396 + 234.9, rel=1e-14)
    bound, _ = S.kfac.kfac_bound((10, 10, "inverse"), 2.0, dec, sizes=SIZES, batch=BATCH)
    assert bound == pytest.approx((480 + 38.5 + 396) / 480 + 0.2, rel=1e-14)


def test_hvp_and_autodiff_flops_by_hand(S):
    # tangent of forward-over-reverse: 2F₁ + 6F₂ = 2·120 + 6·80
    assert S.adaptive.hvp_tangent_flops(SIZES, BATCH) == 720.0
    ad = S.autodiff
    assert ad.matmul_flops(SIZES, BATCH, "grad") == S.B.mlp_flops(SIZES, BATCH)["gradient"] == 480.0
    assert ad.matmul_flops(SIZES, BATCH, "hvp") == 3 * 120 + 8 * 80
    assert ad.matmul_flops(SIZES, BATCH, "hvp_op") == 2 * 120 + 6 * 80
    assert ad.matmul_flops(SIZES, BATCH, "ggn") == 3 * 120 + 5 * 80
    # the README's HVP row: 2.38 gradients one-shot, 1.75 per product on the benchmark's MLP
    assert ad.flop_ratio(ad.BIG, ad.BIG_BATCH, "hvp") == pytest.approx(2531328 / 1063936, rel=1e-14)
    assert round(ad.flop_ratio(ad.BIG, ad.BIG_BATCH, "hvp"), 2) == 2.38
    assert round(ad.flop_ratio(ad.BIG, ad.BIG_BATCH, "hvp_op"), 2) == 1.75


def test_shampoo_parts_by_hand(S):
    # (3, 4): 3²·4 + 4²·3 + 2·3·3·4 + 2·3·4·4 = 252; bias 4: 16 + 32; (4, 2): 32 + 16 + 64 + 32 = 144; bias 2: 4 + 8
    # roots 3, 4, 4, 4, 2, 2: 2n³ each = 470, ÷ 10
    flops, roots = S.adaptive.shampoo_parts([(3, 4), (4,), (4, 2), (2,)], 10)
    assert roots == [3, 4, 4, 4, 2, 2] and flops == pytest.approx(456 + 47.0, rel=1e-14)
    flops, roots = S.adaptive.shampoo_parts([(8, 4)], 10, block_size=4)   # two 4 × 4 blocks
    assert roots == [4, 4, 4, 4] and flops == pytest.approx(2 * (64 + 64 + 128 + 128) + 4 * 128 / 10, rel=1e-14)


def test_kfac_products_by_hand(S):
    dims = [(2, 9, 4, 3), (2, 1, 5, 6)]   # a conv layer (N 2, L 9, K 4, O 3), then a dense 5 -> 6
    expand = S.cnn.kfac_products(dims, "expand")
    assert expand == {"forward": [("gemm", (18, 4, 3)), ("gemm", (2, 5, 6))],
                      "weight_grads": [("tn", (18, 3, 4)), ("tn", (2, 6, 5))],
                      "input_grads": [("gemm", (2, 6, 5))], "mc_sweep": [("gemm", (2, 6, 5))],
                      "factor_A": [("syrk", (18, 5)), ("syrk", (2, 6))],
                      "factor_G": [("syrk", (18, 3)), ("syrk", (2, 6))],
                      "precondition": [("gemm", (5, 5, 3)), ("gemm", (5, 3, 3)), ("gemm", (6, 6, 6)),
                                       ("gemm", (6, 6, 6))]}
    reduce = S.cnn.kfac_products(dims, "reduce", samples=2)
    assert reduce["factor_A"] == [("syrk", (2, 5)), ("syrk", (2, 6))]
    assert reduce["factor_G"] == [("syrk", (2, 3))] * 2 + [("syrk", (2, 6))] * 2
    assert reduce["mc_sweep"] == [("gemm", (2, 6, 5))] * 2
    flops = {k: sum(S.cnn.product_flops(op, s) for op, s in v) for k, v in expand.items()}
    assert flops == {"forward": 432 + 120, "weight_grads": 432 + 120, "input_grads": 120, "mc_sweep": 120,
                     "factor_A": 25 * 18 + 36 * 2, "factor_G": 9 * 18 + 36 * 2,
                     "precondition": 150 + 90 + 432 + 432}
    assert S.cnn.factor_sizes(dims) == [5, 6, 3, 6]


def test_interleaved_inner_and_warmup(S):
    calls = {"a": 0, "b": 0}

    def count(name):
        def fn():
            calls[name] += 1
        return fn
    times = S.B.interleaved({"a": count("a"), "b": count("b")}, rounds=3, warmup=1, inner={"a": 4})
    assert calls == {"a": 4 + 3 * 4, "b": 1 + 3}
    assert [len(t) for t in times.values()] == [3, 3]
    calls.update(a=0, b=0)
    S.B.interleaved({"a": count("a"), "b": count("b")}, rounds=2, warmup=0)
    assert calls == {"a": 2, "b": 2}


def test_measure_is_per_round_ratios(S):
    """Round i's ratio a[i] / b[i], then the median and range: not a ratio of medians with an envelope."""
    S.autodiff.MEASUREMENTS.clear()
    S.autodiff._measure({"a": [2.0, 4.0, 6.0], "b": [1.0, 1.0, 3.0]}, "a over b", "a", "b", target=3.0, bound=1.5)
    (m,) = S.autodiff.MEASUREMENTS
    S.autodiff.MEASUREMENTS.clear()
    assert (m["median"], m["range"]) == (2.0, [2.0, 4.0])
    assert m["met"] is True and m["bound"] == 1.5 and m["unit"] == "× b"


@pytest.mark.parametrize("argv", [["--rounds", "0"], ["--rounds", "-1"], ["--threads", "0"], ["--rounds", "x"]])
def test_common_arguments_refuse_non_positive(S, argv, capsys):
    import argparse
    ap = S.B.common_arguments(argparse.ArgumentParser())
    with pytest.raises(SystemExit) as exc:
        ap.parse_args(argv)
    assert exc.value.code == 2 and "positive integer" in capsys.readouterr().err
    args = ap.parse_args(["--quick", "--rounds", "3", "--threads", "1", "--json", "x.json"])
    assert (args.quick, args.rounds, args.threads, args.json) == (True, 3, 1, "x.json")


@pytest.mark.parametrize("script,argv,says", [
    ("cnn", ["--parts", "gradient", "--rounds", "-1"], "positive integer"),
    ("cnn", ["--rounds", "0"], "positive integer"),
    ("cnn", ["--parts", "foo"], "unknown part"),
    ("adaptive", ["--rounds", "-1"], "positive integer"),
    ("adaptive", ["--rounds", "0"], "positive integer"),
    ("kfac", ["--parts", "foo"], "unknown part"),
    ("kfac", ["--parts", ","], "unknown part"),
    ("kfac", ["--rounds", "0"], "positive integer"),
    ("autodiff", ["--inner", "0"], "positive integer"),
    ("qn", ["--rounds", "0"], "positive integer"),
    ("qn", ["--max-n", "10"], "--max-n"),
    ("all", ["--threads", "0"], "positive integer"),
    ("all", ["--only", "foo"], "unknown script"),
    ("tune", ["--only", "lbfgs"], "no grid"),
    ("tune", ["--problems", "nope"], "not a built-in"),
    ("tune", ["--only", "adam", "--write"], "--write"),
])
def test_bad_inputs_are_parser_errors(S, script, argv, says, capsys):
    with pytest.raises(SystemExit) as exc:
        getattr(S, script).main(argv)
    assert exc.value.code == 2 and says in capsys.readouterr().err


def test_lbfgs_slope_needs_two_large_sizes(S, capsys):
    scaling, slope_step, slope_loop = S.qn.lbfgs_scaling([1000, 10000], steps=1, warmup=0)
    assert len(scaling) == 2 and slope_step is None and slope_loop is None
    out = capsys.readouterr().out
    assert "not measured" in out and "nan" not in out


# A script's --json as bench_all reads it: measurements at the top level (bench_autodiff's form) or nested in a
# part (bench_kfac's "cost").
FIXTURE = {
    "autodiff": {"threads": "1", "measurements": [
        {"what": "refopt gradient / hand-written (MLP)", "unit": "× hand-written", "median": 0.9, "range": [0.85, 1.0],
         "target": 1.05, "bound": None, "met": True, "peak_fraction": 0.78},
        {"what": "refopt hvp one-shot / refopt gradient (MLP)", "unit": "× refopt gradient", "median": 2.7,
         "range": [2.6, 2.8], "target": None, "bound": 2.379, "met": None}]},
    "kfac": {"cost": {"threads": "2", "measurements": [
        {"what": "K-FAC T1=1 T2=10 (inverse, pi), per step", "unit": "× bound", "median": 1.19, "range": [1.1, 1.2],
         "target": 1.1, "target_on": "bound", "bound": 2.75, "met": False},
        {"what": "EKFAC T1=1 T2=10, per step", "unit": "× SGD step", "median": 5.2, "range": [5.0, 5.4],
         "target": None, "bound": None, "bound_note": "no bound counted", "met": None}]}},
}


def test_rows_of_reads_top_level_and_nested_parts(S):
    rows = S.all.rows_of({"label": "autodiff", "json": FIXTURE["autodiff"]})
    assert [r["script"] for r in rows] == ["autodiff"] * 2 and rows[0]["threads"] == "1"
    assert rows[1]["bound"] == 2.379
    rows = S.all.rows_of({"label": "kfac", "json": FIXTURE["kfac"]})
    assert [r["what"] for r in rows] == ["K-FAC T1=1 T2=10 (inverse, pi), per step", "EKFAC T1=1 T2=10, per step"]
    assert rows[0]["threads"] == "2"
    assert S.all.rows_of({"label": "none", "json": None}) == []


def test_markdown_prints_every_bound(S):
    results = [{"label": k, "script": f"bench_{k}.py", "json": v} for k, v in FIXTURE.items()]
    results.append({"label": "quasi_newton", "script": "bench_quasi_newton.py", "json": None})
    results.append({"label": "slope", "script": "bench_slope.py", "json": {"threads": "1", "measurements": [
        {"what": "slope", "unit": "(1 = linear)", "median": 1.08, "range": [1.08, 1.08], "target": 1.1,
         "bound": 1.0, "met": True}]}})
    rows = [m for r in results for m in S.all.rows_of(r)]
    text = S.all.markdown(rows, results, 1, True)
    lines = text.splitlines()
    assert "`python scripts/bench_all.py --quick --threads 1 --markdown`" in lines[0]
    assert "BLAS threads 1, 2" in lines[0]
    body = {line.split(" | ")[0][2:]: line for line in lines if line.startswith("| ") and " | " in line}
    assert body["refopt gradient / hand-written (MLP)"] == \
        "| refopt gradient / hand-written (MLP) | 0.90× hand-written (0.85–1.00); 78 % of matmul peak | ≤ 1.05 ✓ |"
    assert body["refopt hvp one-shot / refopt gradient (MLP)"] == \
        "| refopt hvp one-shot / refopt gradient (MLP) | 2.70× refopt gradient (2.60–2.80); flop bound 2.38× refopt " \
        "gradient |  |"
    assert "1.19× bound (1.10–1.20); bound 2.75× an SGD step | ≤ 1.1× the flop bound **missed** |" in \
        body["K-FAC T1=1 T2=10 (inverse, pi), per step"]
    assert "5.20× SGD step (5.00–5.40); no bound counted |" in body["EKFAC T1=1 T2=10, per step"]
    assert body["slope"] == "| slope | 1.08 (1 = linear) (1.08–1.08); bound 1.00 | ≤ 1.1 ✓ |"
    assert body["bench_quasi_newton.py"].startswith("| bench_quasi_newton.py | (no results written")
