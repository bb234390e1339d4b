"""Per-sample confidence summaries from per-token statistics of the raw temperature-1 distribution (pure numpy).

While sampling, the engine records three numbers per response token t from the model's raw (temperature-1)
next-token distribution p_t over the vocabulary of size V (engine.sampler.token_stats):

* the entropy H(p_t) = -sum_v p_t(v) log p_t(v);
* the self-certainty term KL(U || p_t) = -log V - (1/V) sum_v log p_t(v), the divergence of p_t from the
  uniform distribution; its mean over the response is the self-certainty of Kang et al. 2025, "Scalable
  Best-of-N Selection for Large Language Models via Self-Certainty", arXiv 2502.18581 (higher = more certain);
* the token confidence C_t = -(1/k) sum_{j<=k} log p_t(top_j) over the k = 20 most likely tokens, of Fu et al.
  2025, "Deep Think with Confidence" (DeepConf), arXiv 2508.15260 (higher = more confident). Because the k
  largest probabilities sum to at most 1, C_t >= log k > 0.

`summarize_token_stats` turns those per-token arrays into the per-sample fields stored in samples.jsonl, and
`lowest_group` is the statistic online early stopping (engine.generate.EarlyStop) compares with its threshold.
Pure numpy: the row builder and the reports use it without torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

# DeepConf's groups are 2048 tokens and its tail 2048 tokens, sized for reasoning traces of tens of thousands of
# tokens. Our responses are a few hundred tokens at most (often far fewer), where a 2048-token group would be the
# whole response and the lowest-group / bottom-10% / tail confidences would all collapse into the mean; 32 tokens
# (a sentence or two, one reasoning step) keeps them local.
DEFAULT_WINDOW = 32
DEFAULT_TAIL = 32
# k of DeepConf's token confidence (the number of most likely tokens whose log-probs are averaged).
DEFAULT_TOP_K = 20
# DeepConf's "bottom 10%" group confidence: the mean of the lowest 10% of the group confidences.
BOTTOM_FRACTION = 0.1

KEYS = ("entropy_mean", "self_certainty", "conf_mean", "conf_lowest_group", "conf_bottom10", "conf_tail")


def _finite(x: Sequence[float] | np.ndarray) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).reshape(-1)
    return a[np.isfinite(a)]


def group_confidences(conf: Sequence[float] | np.ndarray, window: int = DEFAULT_WINDOW) -> np.ndarray:
    """DeepConf group confidences (Fu et al. 2025, arXiv 2508.15260, Sec. 3.1): the mean token confidence of every
    sliding window of `window` consecutive tokens, stride 1, in O(n) via a cumulative sum. Non-finite values are
    dropped first; a response shorter than the window is one group (its mean); an empty one has no groups."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    c = _finite(conf)
    if c.size == 0:
        return np.empty(0, dtype=np.float64)
    w = min(window, c.size)
    cs = np.concatenate(([0.0], np.cumsum(c)))
    return (cs[w:] - cs[:-w]) / w


def lowest_group(conf: Sequence[float] | np.ndarray, window: int = DEFAULT_WINDOW) -> float:
    """DeepConf's lowest group confidence of one response (NaN when it has no finite token confidence)."""
    groups = group_confidences(conf, window)
    return float(groups.min()) if groups.size else math.nan


def _bottom_mean(groups: np.ndarray, fraction: float = BOTTOM_FRACTION) -> float:
    """Mean of the lowest `fraction` of the groups, at least one (the count rounds down)."""
    m = max(1, int(math.floor(fraction * groups.size + 1e-9)))
    return float(np.sort(groups)[:m].mean())


def summarize_token_stats(entropy: Sequence[float] | np.ndarray, kl_u: Sequence[float] | np.ndarray,
                          conf: Sequence[float] | np.ndarray, window: int = DEFAULT_WINDOW,
                          tail: int = DEFAULT_TAIL) -> dict[str, float | None]:
    """One response's confidence summaries from its per-token statistics (each an array over the tokens).

    * `entropy_mean`: mean token entropy H(p_t) (lower = more certain);
    * `self_certainty`: mean of KL(U || p_t), the self-certainty of Kang et al. 2025 (arXiv 2502.18581);
    * `conf_mean`: mean DeepConf token confidence C_t (Fu et al. 2025, arXiv 2508.15260);
    * `conf_lowest_group`: DeepConf's lowest group confidence, the minimum over the sliding windows of `window`
      tokens (stride 1) of the window mean of C_t (a response shorter than the window is one group);
    * `conf_bottom10`: DeepConf's bottom-10% group confidence, the mean of the lowest 10% of the group
      confidences (at least one group);
    * `conf_tail`: DeepConf's tail confidence, the mean C_t of the last `tail` tokens.

    Non-finite inputs are ignored (the windows run over the finite C_t in order); a statistic with no finite
    input (an empty response) is None. Values are plain floats, ready for JSON.
    """
    if tail < 1:
        raise ValueError(f"tail must be >= 1, got {tail}")
    h, kl, c = _finite(entropy), _finite(kl_u), _finite(conf)
    groups = group_confidences(c, window)
    return {
        "entropy_mean": float(h.mean()) if h.size else None,
        "self_certainty": float(kl.mean()) if kl.size else None,
        "conf_mean": float(c.mean()) if c.size else None,
        "conf_lowest_group": float(groups.min()) if groups.size else None,
        "conf_bottom10": _bottom_mean(groups) if groups.size else None,
        "conf_tail": float(c[-tail:].mean()) if c.size else None,
    }
