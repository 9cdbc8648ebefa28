"""The hyperparameters of the comparison, per problem and optimizer (data only).

``TUNED[problem][optimizer]``: the built-in network problems; ``GENERIC[optimizer]``: any other network
problem (the user's data); ``FUNCTIONS[optimizer]``: the test functions. What is not listed is the
optimizer's default. ``refopt.compare.tuned_hyperparameters`` reads these tables for ``refopt compare``
and ``refopt train``; ``runner.run`` does not (a RunConfig's hyperparameters are all it uses).
"""

# Written by scripts/tune_compare.py --write on 2026-12-01 (10 minutes of CPU); its
# docstring gives the criterion. Each setting ran 200 steps (compare's budget: full batch, seed 0, no time
# limit) from the optimizer's defaults; the winner has the lowest final training loss among the settings that did
# not diverge (a training loss non-finite or above 10 × |initial loss|), the smaller step size on
# ties (within a relative 1e-09). The grids (factor-of-3 ladders):
#   sgd: lr in [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0], momentum=0.9
#   adam: lr in [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
#   adagrad: lr in [0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
#   shampoo: lr in [0.03, 0.1, 0.3, 1.0, 3.0, 10.0]
#   adahessian: lr in [0.03, 0.1, 0.3, 1.0, 3.0]
#   sophia_g: lr in [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
#   sophia_h: lr in [0.003, 0.01, 0.03, 0.1, 0.3, 1.0]
#   natural_gradient: lr in [0.1, 0.3, 1.0, 3.0]
#   kfac: lr in [0.03, 0.1, 0.3, 1.0, 3.0]
#   kfac_tridiag: lr in [0.03, 0.1, 0.3, 1.0, 3.0]
#   ekfac: lr in [0.03, 0.1, 0.3, 1.0, 3.0]
#   kbfgs: lr in [0.03, 0.1, 0.3, 1.0, 3.0]
#   lbfgs, bfgs, newton_cg: no grid (line searches; their defaults).
#   Winners at the top of their grid: sgd on digits_logistic, adam on digits_logistic, adagrad on
#     digits_logistic, shampoo on digits_logistic, sophia_g on digits_logistic, kfac on digits_logistic,
#     kfac_tridiag on digits_logistic, ekfac on digits_logistic, kbfgs on digits_logistic, shampoo on
#     digits_mlp, kfac on digits_mlp, kfac_tridiag on digits_mlp, kbfgs on digits_mlp, sgd on logistic, adam
#     on logistic, adagrad on logistic, shampoo on logistic, adahessian on logistic, sophia_g on logistic,
#     natural_gradient on logistic, kfac on logistic, kfac_tridiag on logistic, ekfac on logistic, kbfgs on
#     logistic, sgd on synthetic_mlp, adam on synthetic_mlp, shampoo on synthetic_mlp, natural_gradient on
#     synthetic_mlp, kfac on synthetic_mlp, kfac_tridiag on synthetic_mlp, ekfac on synthetic_mlp, kbfgs on
#     synthetic_mlp.
# GENERIC: per optimizer, the setting that diverged on no built-in network problem and had the best worst-case
# rank over them. FUNCTIONS: the defaults, except where they diverge on a test function:
#   sgd: its default lr = 0.1 diverges on beale, dixon_price, extended_rosenbrock, powell_singular,
#     quadratic, rosenbrock, wood; lr = 0.0003 on none
#   adahessian: its defaults diverge on trid and so does every lr tried; the defaults stay (the table shows
#     the divergence)

TUNED: dict[str, dict[str, dict]] = {
    "digits_autoencoder": {
        "sgd": {"lr": 0.1, "momentum": 0.9},
        "adam": {"lr": 0.03},
        "adagrad": {"lr": 0.1},
        "shampoo": {"lr": 0.3},
        "adahessian": {"lr": 0.03},
        "sophia_g": {"lr": 0.01},
        "sophia_h": {"lr": 0.01},
        "natural_gradient": {"lr": 0.3},
        "kfac": {"lr": 1.0},
        "kfac_tridiag": {"lr": 0.3},
        "ekfac": {"lr": 0.3},
        "kbfgs": {"lr": 1.0},
    },
    "digits_logistic": {
        "sgd": {"lr": 10.0, "momentum": 0.9},
        "adam": {"lr": 1.0},
        "adagrad": {"lr": 10.0},
        "shampoo": {"lr": 10.0},
        "adahessian": {"lr": 0.3},
        "sophia_g": {"lr": 1.0},
        "sophia_h": {"lr": 0.1},
        "natural_gradient": {"lr": 1.0},
        "kfac": {"lr": 3.0},
        "kfac_tridiag": {"lr": 3.0},
        "ekfac": {"lr": 3.0},
        "kbfgs": {"lr": 3.0},
    },
    "digits_mlp": {
        "sgd": {"lr": 3.0, "momentum": 0.9},
        "adam": {"lr": 0.1},
        "adagrad": {"lr": 0.3},
        "shampoo": {"lr": 10.0},
        "adahessian": {"lr": 0.3},
        "sophia_g": {"lr": 0.03},
        "sophia_h": {"lr": 0.03},
        "natural_gradient": {"lr": 0.3},
        "kfac": {"lr": 3.0},
        "kfac_tridiag": {"lr": 3.0},
        "ekfac": {"lr": 1.0},
        "kbfgs": {"lr": 3.0},
    },
    "logistic": {
        "sgd": {"lr": 10.0, "momentum": 0.9},
        "adam": {"lr": 1.0},
        "adagrad": {"lr": 10.0},
        "shampoo": {"lr": 10.0},
        "adahessian": {"lr": 3.0},
        "sophia_g": {"lr": 1.0},
        "sophia_h": {"lr": 0.3},
        "natural_gradient": {"lr": 3.0},
        "kfac": {"lr": 3.0},
        "kfac_tridiag": {"lr": 3.0},
        "ekfac": {"lr": 3.0},
        "kbfgs": {"lr": 3.0},
    },
    "synthetic_mlp": {
        "sgd": {"lr": 10.0, "momentum": 0.9},
        "adam": {"lr": 1.0},
        "adagrad": {"lr": 1.0},
        "shampoo": {"lr": 10.0},
        "adahessian": {"lr": 1.0},
        "sophia_g": {"lr": 0.1},
        "sophia_h": {"lr": 0.3},
        "natural_gradient": {"lr": 3.0},
        "kfac": {"lr": 3.0},
        "kfac_tridiag": {"lr": 3.0},
        "ekfac": {"lr": 3.0},
        "kbfgs": {"lr": 3.0},
    },
}

GENERIC: dict[str, dict] = {
    "sgd": {"lr": 0.1, "momentum": 0.9},
    "adam": {"lr": 0.1},
    "adagrad": {"lr": 0.3},
    "shampoo": {"lr": 1.0},
    "adahessian": {"lr": 0.1},
    "sophia_g": {"lr": 0.1},
    "sophia_h": {"lr": 0.03},
    "natural_gradient": {"lr": 0.3},
    "kfac": {"lr": 1.0},
    "kfac_tridiag": {"lr": 3.0},
    "ekfac": {"lr": 1.0},
    "kbfgs": {"lr": 3.0},
}

FUNCTIONS: dict[str, dict] = {
    "sgd": {"lr": 0.0003},
}
