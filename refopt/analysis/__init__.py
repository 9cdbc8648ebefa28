"""Loss-surface analysis: curvature matrices as linear operators (``operators``), spectral estimates from
their products (``spectral``: power iteration, Lanczos, Hutchinson's trace, stochastic Lanczos quadrature)
and the report behind ``refopt analyze`` (``report``). docs/analysis.md has the formulas and conventions."""
from .operators import (KFAC_POWERS, OPERATOR_KINDS, CurvatureOperator, as_operator, ekfac_operator,
                        fisher_operator, ggn_operator, hessian_operator, kfac_operator,
                        kfac_preconditioned_ggn_operator, make_operator)
from .report import ANALYSES, CONDITION_TOL, MAX_TOP, METHODS, TOP_TOL, analyze, format_report, plot_density
from .spectral import (Eigenpairs, LanczosEigenpairs, LanczosResult, SLQResult, TraceEstimate, check_symmetric,
                       gaussian_density, hutchinson_trace, lanczos, lanczos_eigenpairs, slq, top_eigenpairs)

__all__ = ["CurvatureOperator", "as_operator", "hessian_operator", "ggn_operator", "fisher_operator",
           "kfac_operator", "ekfac_operator", "kfac_preconditioned_ggn_operator", "make_operator",
           "OPERATOR_KINDS", "KFAC_POWERS",
           "Eigenpairs", "LanczosResult", "LanczosEigenpairs", "TraceEstimate", "SLQResult", "check_symmetric",
           "top_eigenpairs", "lanczos", "lanczos_eigenpairs", "hutchinson_trace", "slq", "gaussian_density",
           "ANALYSES", "METHODS", "TOP_TOL", "CONDITION_TOL", "MAX_TOP", "analyze", "format_report", "plot_density"]
