"""The names of the analysis's metrics and its grid of exponents, without torch: config
validation, results.json readers and aggregate use them without paying for the mathematics."""

from __future__ import annotations

# The metric names: {nfm}_{corr}_{target}. The NFM is W^T W ("raw") or (W - W0)^T (W - W0)
# ("delta"); the correlation a cosine ("cos") or a cosine of mean-removed entries ("pearson");
# the target the AGOP itself or its square root.
NFM_KINDS = ("raw", "delta")
CORR_KINDS = ("cos", "pearson")
TARGETS = ("agop", "sqrt")
VARIANTS = tuple(f"{n}_{c}_{t}" for n in NFM_KINDS for c in CORR_KINDS for t in TARGETS)
# Centered NFA (Beaglehole et al. 2024, "Feature learning as alignment"): the delta NFM
# D^T D against the centered AGOP CAGOP = D^T K D.
CENTERED_VARIANTS = tuple(f"delta_{c}_cagop" for c in CORR_KINDS)
# Every name in LayerComparison.metrics; each one is a valid analysis.primary.
METRICS = VARIANTS + CENTERED_VARIANTS
# The reference code's choice, and the default of analysis.primary.
DEFAULT_METRIC = "delta_cos_agop"
# alpha_star: the exponents a tried in corr(NFM, AGOP^a), 0..2 in steps of 0.01.
ALPHAS = tuple(i / 100 for i in range(201))


def metric_kinds(metric: str) -> tuple[str, str]:
    """The NFM kind (raw|delta) and correlation kind (cos|pearson) of a name in METRICS."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {', '.join(METRICS)}")
    nfm_kind, corr_kind, _ = metric.split("_")
    return nfm_kind, corr_kind
