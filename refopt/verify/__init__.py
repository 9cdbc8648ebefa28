"""Verification toolkit: golden traces, trace comparison, convention search, library profiles.

See ``docs/verify.md`` for the trace layout and a walk-through.
"""
from .profiles import PROFILES, Profile, get_profile
from .trace import (TRACE_FORMAT, TRACE_PROBLEMS, Divergence, Trace, check_trace, compare_traces, export_trace,
                    load_trace, make_trace, search_conventions)

__all__ = ["PROFILES", "Profile", "get_profile", "TRACE_FORMAT", "TRACE_PROBLEMS", "Trace", "Divergence",
           "make_trace", "export_trace", "load_trace", "compare_traces", "check_trace", "search_conventions"]
