"""What the ``refopt`` command reads from its user: ``NAME=VALUE`` hyperparameters, seeds, optimizer
lists, ``--hp-json``, and the input and output paths, each refused with a ValueError naming the option.

Layer: above optim (the seed check is optim's integer check) and below verify and cli, which both read
their arguments with these functions; they cannot live in cli.py, which imports verify's subcommands,
without an import cycle. Importing this module imports no array code: ``check_seed`` imports optim when
it is called, so that the ``refopt`` command can report a bad REFOPT_BACKEND / REFOPT_DTYPE as a one-line
error (see cli.main).
"""
from __future__ import annotations

import json
import os

__all__ = ["parse_value", "parse_hyperparameters", "check_output_path", "check_input_file", "check_seed",
           "parse_optimizer_list", "parse_hp_json"]


def parse_value(text: str):
    """'0.1' → 0.1, '3' → 3, 'true' → True, 'none' → None, '[1,2]' → [1, 2], anything else: the string."""
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
    if text[:1] in "[{":
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            pass
    return text


def parse_hyperparameters(items) -> dict:
    """{name: value} from ``NAME=VALUE`` strings, values read by ``parse_value``; ValueError if malformed."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"hyperparameter {item!r}: expected NAME=VALUE")
        out[key.strip()] = parse_value(value.strip())
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
