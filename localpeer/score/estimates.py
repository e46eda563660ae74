"""What every estimator returns: point estimates, standard errors and convergence facts.

All arrays are indexed by the codes of `Design` (kept elements only). Identification is
sum-to-zero for prompts, judges and thresholds; theta is free (METHOD.md §3).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Estimates:
    """Fitted parameters of one dimension."""

    estimator: str  # "jml" or "mml"
    theta: np.ndarray  # (M,) model traits, logits, higher = better
    theta_cov: np.ndarray  # (M, M) covariance of theta, for SEs and pairwise differences
    delta: np.ndarray  # (I,) prompt difficulties (MML: posterior means), sum to zero
    delta_se: np.ndarray  # (I,) JML: ML standard error; MML: posterior SD
    rho: np.ndarray  # (J,) judge severities, sum to zero, higher = harsher
    rho_se: np.ndarray  # (J,)
    tau: np.ndarray  # (K-1,) Rasch-Andrich thresholds, sum to zero
    tau_se: np.ndarray  # (K-1,)
    item_sd: float  # MML: sigma of the prompt distribution; JML: SD of the estimates
    item_sd_se: float | None  # MML only
    loglik: float  # JML: joint log-likelihood; MML: marginal log-likelihood
    iterations: int
    max_gradient: float  # max |d loglik / d parameter| at the returned point
    converged: bool
    warnings: list[str] = field(default_factory=list)

    @property
    def theta_se(self) -> np.ndarray:
        return np.sqrt(np.maximum(np.diag(self.theta_cov), 0.0))
