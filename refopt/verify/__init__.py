"""Verification toolkit: golden traces, trace comparison, convention search, library profiles, and the
adapters that check a user's optimizer (torch, optax or a plain update function) against refopt.

See ``docs/verify.md`` for the trace layout and a walk-through.
"""
from .adapters import Harness, Report, check_optax, check_torch, check_update
from .profiles import PROFILES, Profile, get_profile
from .trace import (TRACE_FORMAT, TRACE_PROBLEMS, Divergence, Trace, check_trace, compare_traces, export_trace,
                    load_trace, make_trace, search_conventions)

__all__ = ["PROFILES", "Profile", "get_profile", "TRACE_FORMAT", "TRACE_PROBLEMS", "Trace", "Divergence",
           "make_trace", "export_trace", "load_trace", "compare_traces", "check_trace", "search_conventions",
           "Harness", "Report", "check_update", "check_torch", "check_optax"]
