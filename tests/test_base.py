"""The shared argument checks of optim/base.py: what counts as a number, an integer, a switch, a choice."""
import math

import numpy as np
import pytest

from refopt.optim.base import (MAX_PERIOD, check_bool, check_choice, check_int, check_nonnegative, check_positive,
                               check_real_array, check_unit_interval, show_value)

REALS = [check_positive, check_nonnegative, check_unit_interval]


@pytest.mark.parametrize("check", REALS)
@pytest.mark.parametrize("value", [10 ** 400, -10 ** 400, math.nan, math.inf, -math.inf, np.float64("nan"),
                                   1 + 0j, "0.5", None, True, False, np.bool_(True), [0.5], np.array(0.5)])
def test_real_checks_refuse_non_numbers_with_the_name(check, value):
    with pytest.raises(ValueError, match="^beta "):
        check("beta", value)


@pytest.mark.parametrize("check", REALS)
@pytest.mark.parametrize("value", [np.float32(0.25), np.float64(0.25), np.int64(0) + 0.25, 0.25])
def test_real_checks_accept_numpy_scalars_as_python_floats(check, value):
    out = check("beta", value)
    assert type(out) is float and out == 0.25


def test_unit_interval_bounds():
    assert check_unit_interval("b", 0) == 0.0
    for v in (1, 1.0, -1e-300, 10 ** 400):
        with pytest.raises(ValueError, match=r"b must lie in \[0, 1\)"):
            check_unit_interval("b", v)


def test_check_int_bounds_and_types():
    assert check_int("k", np.int64(3)) == 3 and type(check_int("k", np.int64(3))) is int
    assert check_int("k", MAX_PERIOD) == MAX_PERIOD
    assert check_int("k", 7, minimum=0, maximum=7) == 7
    for v in (MAX_PERIOD + 1, 0, 10 ** 400, 2.0, True, np.bool_(True), "3", None, np.array([3])):
        with pytest.raises(ValueError, match=r"^k must be an integer in \[1, 1000000000\]"):
            check_int("k", v)


def test_check_bool_and_choice():
    assert check_bool("on", np.bool_(False)) is False
    for v in (1, 0, "yes", None):
        with pytest.raises(ValueError, match="^on must be True or False"):
            check_bool("on", v)
    assert type(check_choice("mode", np.str_("add"), ("add", "floor"))) is str
    assert check_choice("damping", None, (None, "powell")) is None
    for v in (["add"], {"add": 1}, np.array(["add", "floor"]), "ADD", b"add", 0):
        with pytest.raises(ValueError, match="^mode must be one of"):
            check_choice("mode", v, ("add", "floor"))


def test_show_value_never_fails():
    class Broken:
        def __repr__(self):
            raise RuntimeError
    assert show_value(10 ** 5000) == "an integer of about 5001 digits"  # str() of it would raise
    assert show_value(Broken()) == "<Broken>"
    assert len(show_value("x" * 1000)) == 80


def test_check_real_array():
    np.testing.assert_array_equal(check_real_array("m", [[1, 2], [3, 4]]), [[1.0, 2.0], [3.0, 4.0]])
    for v in ("bogus", [[1 + 2j]], np.array([1 + 2j]), [[10 ** 400]], [[1], [1, 2]], {"a": 1}, [object()]):
        with pytest.raises(ValueError, match="^m must be an array of real numbers"):
            check_real_array("m", v)
