"""Exact t-SNE in numpy (van der Maaten & Hinton, 2008), for a few thousand points.

Used by the grid plots (behavioural vs LLM-output vectors); no scikit-learn
dependency. O(n²) memory and time per iteration: fine up to ~3,000 points.

Example:

>>> y = tsne(np.random.randn(500, 64), perplexity=30, seed=0)   # [500, 2]
"""

from __future__ import annotations

import numpy as np


def _conditional_p(d2: np.ndarray, perplexity: float, tol: float = 1e-5, max_iter: int = 60) -> np.ndarray:
    """Row-wise Gaussian affinities ``P[j|i]`` with entropy log(perplexity), by bisection on the precision."""
    n = d2.shape[0]
    p = np.zeros((n, n))
    target = np.log(perplexity)
    for i in range(n):
        di = np.delete(d2[i], i)
        lo, hi, beta = 0.0, np.inf, 1.0
        for _ in range(max_iter):
            w = np.exp(-(di - di.min()) * beta)
            s = w.sum()
            h = np.log(s) + beta * np.sum((di - di.min()) * w) / s  # entropy of the row
            if abs(h - target) < tol:
                break
            if h > target:
                lo, beta = beta, beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi, beta = beta, (beta + lo) / 2
        p[i, np.arange(n) != i] = w / s
    return p


def tsne(x: np.ndarray, perplexity: float = 30.0, iterations: int = 500, learning_rate: float = 200.0,
         seed: int = 0) -> np.ndarray:
    """``x`` ``[n, d]`` -> ``[n, 2]`` embedding (early exaggeration 12 for the first 100 iterations)."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    if n < 4:
        raise ValueError(f"t-SNE needs at least 4 points, got {n}")
    perplexity = min(perplexity, (n - 1) / 3)
    sq = np.sum(x * x, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0)
    p = _conditional_p(d2, perplexity)
    p = (p + p.T) / (2 * n)
    p = np.maximum(p, 1e-12)
    rng = np.random.default_rng(seed)
    y = rng.normal(scale=1e-4, size=(n, 2))
    velocity = np.zeros_like(y)
    gains = np.ones_like(y)
    for it in range(iterations):
        exaggeration = 12.0 if it < 100 else 1.0
        momentum = 0.5 if it < 250 else 0.8
        sy = np.sum(y * y, axis=1)
        num = 1.0 / (1.0 + sy[:, None] + sy[None, :] - 2 * y @ y.T)
        np.fill_diagonal(num, 0.0)
        q = np.maximum(num / num.sum(), 1e-12)
        pq = (exaggeration * p - q) * num
        grad = 4.0 * ((np.diag(pq.sum(axis=1)) - pq) @ y)
        gains = np.where(np.sign(grad) != np.sign(velocity), gains + 0.2, gains * 0.8).clip(0.01)
        velocity = momentum * velocity - learning_rate * gains * grad
        y = y + velocity
        y = y - y.mean(axis=0)
    return y


def kl_divergence(x: np.ndarray, y: np.ndarray, perplexity: float = 30.0) -> float:
    """KL(P || Q) of an embedding ``y`` of ``x`` (lower = neighbourhoods better kept); for tests."""
    x = np.asarray(x, np.float64)
    n = x.shape[0]
    sq = np.sum(x * x, axis=1)
    p = _conditional_p(np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0), min(perplexity, (n - 1) / 3))
    p = np.maximum((p + p.T) / (2 * n), 1e-12)
    sy = np.sum(y * y, axis=1)
    num = 1.0 / (1.0 + sy[:, None] + sy[None, :] - 2 * y @ y.T)
    np.fill_diagonal(num, 0.0)
    q = np.maximum(num / num.sum(), 1e-12)
    mask = ~np.eye(n, dtype=bool)
    return float(np.sum(p[mask] * np.log(p[mask] / q[mask])))
