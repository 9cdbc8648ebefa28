"""What the ``refopt`` command reads from its user: ``NAME=VALUE`` hyperparameters, seeds, optimizer
lists, ``--hp-json``, ``--divergence-factor``, the input and output paths (a ``--plot`` file's format too),
and the problem (a built-in one, or the user's own data and network: ``add_data_arguments``,
``problem_from_args``), each refused with a ValueError naming the option. The data options are passed to
``problems.user_data.data_problem`` as read (numbers converted where they parse), which validates them once;
its errors are reported with the options' names in place of its arguments'.

Layer: above optim (the seed check is optim's integer check) and below verify and cli, which both read
their arguments with these functions; they cannot live in cli.py, which imports verify's subcommands,
without an import cycle. Importing this module imports no array code: ``check_seed`` imports optim and
``problem_from_args`` the problems when they are called, so that the ``refopt`` command can report a bad REFOPT_BACKEND / REFOPT_DTYPE as a one-line
error (see cli.main).
"""
from __future__ import annotations

import argparse
import json
import math
import os

__all__ = ["parse_value", "parse_hyperparameters", "check_output_path", "check_plot_path", "check_input_file",
           "check_seed", "parse_optimizer_list", "parse_hp_json", "parse_divergence_factor", "add_data_arguments",
           "problem_name_from_args", "problem_from_args", "DEFAULT_PROBLEM", "DEFAULT_VAL_FRACTION"]

DEFAULT_PROBLEM = "digits_mlp"  # --problem when neither it nor --data is given
DEFAULT_VAL_FRACTION = 0.2      # --val-fraction of a --data file: data_problem's default, for the help text


def parse_value(text: str):
    """'0.1' → 0.1, '3' → 3, 'true' → True, 'none' → None, '[1,2]' → [1, 2], '{"name": "cosine"}' → a dict,
    '"cosine"' → 'cosine', anything else: the string. Text that starts with '[', '{' or '"' and is not JSON is
    a ValueError ("not JSON"), so that a mistyped list or schedule spec is not taken for a name."""
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        pass
    if text[:1] in ('[', '{', '"'):
        try:
            return json.loads(text)
        except RecursionError:
            raise ValueError(f"{text[:40]!r} is nested too deeply to read") from None
        except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
            raise ValueError(f"{text[:40]!r} is not JSON ({exc})") from None
    return text


def parse_hyperparameters(items) -> dict:
    """{name: value} from ``NAME=VALUE`` strings, values read by ``parse_value``; ValueError if malformed."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"hyperparameter {item!r}: expected NAME=VALUE")
        try:
            out[key.strip()] = parse_value(value.strip())
        except ValueError as exc:
            raise ValueError(f"hyperparameter {key.strip()}: {exc}") from None
    return out


def check_output_path(path: str, option: str, directory: bool = False) -> None:
    """ValueError naming ``option`` unless ``path`` can be written: a file path (or, with ``directory``, a
    folder to create or reuse) whose parent is an existing, writable directory. Checked before a run so
    that a typo fails at once rather than after the first step (or the whole run)."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{option}: expected a path, got {path!r}")
    if directory:
        if os.path.exists(path) and not os.path.isdir(path):
            raise ValueError(f"{option} {path}: exists and is not a directory")
        if os.path.isdir(path):
            if not os.access(path, os.W_OK):
                raise ValueError(f"{option} {path}: directory is not writable")
            return
    elif os.path.isdir(path):
        raise ValueError(f"{option} {path}: is a directory; expected a file path")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise ValueError(f"{option} {path}: {parent} is not an existing directory")
    if not os.access(parent, os.W_OK) or (os.path.exists(path) and not os.access(path, os.W_OK)):
        raise ValueError(f"{option} {path}: not writable")


def check_plot_path(path: str, option: str = "--plot") -> None:
    """``check_output_path`` for a figure file, and its format (``plotting.plot_format``: png, pdf, svg, jpg,
    ...) checked too, so that ``--plot x.txt`` fails before any work."""
    from .plotting import plot_format  # noqa: PLC0415 (imports serialize, and so the backend; module docs)
    check_output_path(path, option)
    plot_format(path, option)


def check_input_file(path: str, option: str) -> None:
    """ValueError naming ``option`` unless ``path`` is an existing regular file (not a folder, device or pipe)."""
    if not os.path.isfile(path):
        why = "is a directory" if os.path.isdir(path) else \
            "is not a regular file" if os.path.exists(path) else "No such file"
        raise ValueError(f"{option} {path}: {why}")


def check_seed(seed, option: str = "--seed") -> int:
    """``seed`` as an int; ValueError naming ``option`` unless it is an integer in [0, 2⁶³ − 1] (``MAX_SEED``:
    what every file refopt writes and reads holds)."""
    from .optim.base import MAX_SEED, check_int  # noqa: PLC0415 (imports the backend; see the module docs)
    return check_int(option, seed, minimum=0, maximum=MAX_SEED)


def parse_optimizer_list(text: str) -> list:
    """The names of ``--optimizers NAME,NAME,...``; ValueError for an empty list or an empty name."""
    names = [n.strip() for n in text.split(",")]
    if not all(names):
        raise ValueError(f"--optimizers: expected a comma-separated list of optimizer names, got {text!r}")
    return names


def parse_divergence_factor(text) -> float | None:
    """``--divergence-factor``: 'none' (only non-finite losses diverge) or a finite number c > 1 (a loss above
    L₀ + (c − 1)·max(|L₀|, 1) has diverged: ``runner.divergence_bound``); ValueError naming the option."""
    if isinstance(text, str) and text.strip().lower() == "none":
        return None
    try:
        c = float(text)
    except (TypeError, ValueError):
        c = math.nan
    if not math.isfinite(c) or not c > 1:
        raise ValueError(f"--divergence-factor must be a finite number > 1 or none, got {str(text)[:40]!r}")
    return c


def parse_hp_json(text: str) -> dict:
    """``--hp-json``: a JSON object {optimizer: {name: value}}; ValueError naming the option otherwise."""
    try:
        overrides = json.loads(text)
    except RecursionError:
        raise ValueError("--hp-json is nested too deeply to read") from None
    except ValueError as exc:  # JSONDecodeError, and integers beyond Python's digit limit
        raise ValueError(f"--hp-json is not JSON ({exc})") from None
    if not isinstance(overrides, dict) or not all(isinstance(v, dict) for v in overrides.values()):
        raise ValueError('--hp-json must map optimizer names to hyperparameter objects, e.g. {"adam": {"lr": 0.01}}')
    return overrides


def add_data_arguments(parser) -> None:
    """``--problem`` and the options of the user's own data and network (``--data``, ``--sizes``,
    ``--activation``, ``--loss``, ``--val-fraction``, ``--standardize/--no-standardize``, ``--split-seed``) on
    ``parser``; ``problem_from_args`` reads them. Values are read as text and checked there, so that a bad one
    is the one-line ``refopt: error: ...`` naming the option."""
    parser.add_argument("--problem", default=None, help=f"a built-in problem (see `refopt list`; default "
                                                        f"{DEFAULT_PROBLEM})")
    g = parser.add_argument_group("your own data and network (instead of --problem)")
    g.add_argument("--data", default=None, metavar="PATH",
                   help="a .csv (last column the label, header row optional) or .npz (arrays X and y)")
    g.add_argument("--sizes", default=None, metavar="D,H,...,C",
                   help="layer widths, e.g. 5,16,3 (default: features,32,classes or targets)")
    g.add_argument("--activation", default=None, metavar="NAME[,NAME...]",
                   help="hidden activation: one name, or one per hidden layer (default tanh)")
    g.add_argument("--loss", default=None, metavar="{softmax,gaussian,bernoulli}",
                   help="softmax cross-entropy (integer labels; the default), Gaussian or Bernoulli (0/1)")
    g.add_argument("--val-fraction", default=None, metavar="F",
                   help=f"fraction held out for validation, in [0, 1) (default {DEFAULT_VAL_FRACTION}; 0: none)")
    g.add_argument("--standardize", default=None, action=argparse.BooleanOptionalAction,
                   help="scale each feature by the training rows' mean and deviation (default: on)")
    g.add_argument("--split-seed", default=None, metavar="SEED", help="seed of the held-out split (default 0)")


def _parse_sizes(text: str) -> list:
    parts = [p.strip() for p in text.split(",")]
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = None
    if not sizes or len(sizes) < 2 or any(s < 1 for s in sizes):
        raise ValueError(f"--sizes: expected at least two positive integers separated by commas, e.g. 5,16,3, "
                         f"got {text!r}")
    return sizes


def problem_name_from_args(args) -> str:
    """The name of the problem ``add_data_arguments``' options name, without building it: ``--problem``
    (default ``DEFAULT_PROBLEM``) or "data:<file name>" for ``--data`` (``data_problem``'s name). ValueError
    (naming the option) for ``--data`` with ``--problem`` or a data option without ``--data``."""
    given = [option for attr, option, _ in _DATA_OPTIONS if getattr(args, attr, None) is not None]
    if args.data is None:
        if given:
            raise ValueError(f"{given[0]} needs --data (the built-in problems have their own data and network)")
        return args.problem or DEFAULT_PROBLEM
    if args.problem is not None:
        raise ValueError("--data and --problem: give one of them (your own data file, or a built-in problem)")
    from .problems.user_data import data_name  # noqa: PLC0415 (imports the array backend; module docs)
    return data_name(args.data)


def _number_or_text(text: str, kind):
    """``kind(text)`` where it parses, else the text itself (``data_problem`` then refuses it, naming it)."""
    try:
        return kind(text)
    except ValueError:
        return text


def _parse_activation(text: str):
    names = [a.strip() for a in text.split(",")]
    return names[0] if len(names) == 1 else names


# The options that describe the user's own data and network (each needs --data): data_problem's argument
# (also the attribute argparse sets), the option that sets it (its errors are reported under the option's
# name) and how its text is read. Only the options given are passed, so the defaults are data_problem's.
_DATA_OPTIONS = (("sizes", "--sizes", _parse_sizes), ("activation", "--activation", _parse_activation),
                 ("loss", "--loss", str), ("val_fraction", "--val-fraction", lambda t: _number_or_text(t, float)),
                 ("standardize", "--standardize/--no-standardize", bool),
                 ("split_seed", "--split-seed", lambda t: _number_or_text(t, int)))


def problem_from_args(args):
    """The problem that ``add_data_arguments``' options name (``problem_name_from_args``): the built-in
    ``--problem``, or ``problems.user_data.data_problem`` of ``--data`` with the other options; ValueError
    (naming the option) for a bad combination or value."""
    name = problem_name_from_args(args)
    if args.data is None:
        from .problems.registry import make_problem  # noqa: PLC0415 (imports the array backend; module docs)
        return make_problem(name)
    from .problems.user_data import data_problem  # noqa: PLC0415
    given = {attr: read(getattr(args, attr)) for attr, _, read in _DATA_OPTIONS if getattr(args, attr) is not None}
    try:
        return data_problem(args.data, **given)
    except ValueError as exc:  # the argument names of data_problem as the options that set them
        text = str(exc)
        for word, option, _ in _DATA_OPTIONS:
            if text.startswith(word + " ") or text.startswith(word + ":"):
                text = option + text[len(word):]
        if text.startswith(str(args.data) + ":"):  # about the path itself: missing, not a regular file
            text = "--data " + text
        raise ValueError(text) from None
