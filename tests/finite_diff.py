"""A plain central-difference Hessian, shared by the tests that check analytic SEs."""

import numpy as np


def hessian(f, p: np.ndarray, h: float) -> np.ndarray:
    """d2 f / dp dp' by the four-point central difference, step h in every coordinate."""
    n = p.size
    H = np.zeros((n, n))
    for a in range(n):
        for b in range(a, n):
            e_a, e_b = np.eye(n)[a] * h, np.eye(n)[b] * h
            H[a, b] = H[b, a] = (f(p + e_a + e_b) - f(p + e_a - e_b) - f(p - e_a + e_b)
                                 + f(p - e_a - e_b)) / (4 * h * h)
    return H
