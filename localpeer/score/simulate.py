"""Draw ratings from known many-facet Rasch parameters, to test that fitting recovers them.

    from localpeer.score.simulate import simulate
    sim = simulate(n_models=5, n_items=200, n_judges=3, seed=0)
    sim.truth.theta, sim.models, sim.items, sim.judges, sim.scores

`localpeer score --selftest` simulates, fits and prints the recovery.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from localpeer.score.rsm import category_probs


@dataclass(frozen=True)
class Truth:
    """The parameters ratings were drawn from (prompts and judges centred to sum to zero)."""

    theta: np.ndarray  # (M,)
    delta: np.ndarray  # (I,)
    rho: np.ndarray  # (J,)
    tau: np.ndarray  # (K-1,)
    item_sd: float


@dataclass(frozen=True)
class Simulation:
    """Ratings in long format, one entry per rating, plus the truth they came from."""

    models: np.ndarray  # (N,) str
    items: np.ndarray  # (N,) str
    judges: np.ndarray  # (N,) str
    scores: np.ndarray  # (N,) int on the scale [scale_min, scale_min + K - 1]
    truth: Truth
    scale_min: int
    scale_max: int


def default_thresholds(n_categories: int) -> np.ndarray:
    """Evenly spaced, ordered thresholds from -2 to 2 logits (sum zero)."""
    return np.linspace(-2.0, 2.0, n_categories - 1)


def simulate(
    n_models: int = 5,
    n_items: int = 200,
    n_judges: int = 3,
    n_categories: int = 5,
    theta: np.ndarray | None = None,
    item_sd: float = 1.0,
    judge_sd: float = 0.5,
    tau: np.ndarray | None = None,
    missing: float = 0.0,
    seed: int = 0,
    scale_min: int = 1,
) -> Simulation:
    """Fully crossed models x prompts x judges, each rating kept with probability 1 - missing."""
    rng = np.random.default_rng(seed)
    theta = np.linspace(-1.0, 1.0, n_models) if theta is None else np.asarray(theta, float)
    tau = default_thresholds(n_categories) if tau is None else np.asarray(tau, float)
    delta = rng.normal(0.0, item_sd, n_items)
    delta -= delta.mean()
    rho = rng.normal(0.0, judge_sd, n_judges) if n_judges > 1 else np.zeros(1)
    rho -= rho.mean()
    m, i, j = (a.ravel() for a in np.meshgrid(
        np.arange(n_models), np.arange(n_items), np.arange(n_judges), indexing="ij"))
    if missing > 0:
        keep = rng.random(m.size) >= missing
        m, i, j = m[keep], i[keep], j[keep]
    scores = draw_scores(theta[m] - delta[i] - rho[j], tau, rng) + scale_min
    width_m, width_i, width_j = (len(str(n)) for n in (n_models, n_items, n_judges))
    return Simulation(
        np.char.add("model-", np.char.zfill(m.astype(str), width_m)),
        np.char.add("prompt-", np.char.zfill(i.astype(str), width_i)),
        np.char.add("judge-", np.char.zfill(j.astype(str), width_j)),
        scores,
        Truth(theta, delta, rho, tau, item_sd),
        scale_min,
        scale_min + tau.size,
    )


def draw_scores(eta: np.ndarray, tau: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One category (0..K-1) per rating, by inverse CDF."""
    cdf = np.cumsum(category_probs(eta, tau), axis=1)
    u = rng.random(eta.size)[:, None]
    return np.minimum((u > cdf).sum(axis=1), tau.size)
