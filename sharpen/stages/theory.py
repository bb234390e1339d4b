"""Theory lab: SFT-Sharpening versus XPO on a synthetic problem where pi_base covers the argmax poorly.

The question (SHARPENING.md 4, Thm. 4.1 vs Thm. 4.3): how many samples per prompt does each method need before
the learned policy puts its mass on y*(x) = argmax_y pi_base(y|x)?

Problem (a linear-softmax class in the spirit of the paper's Example J.1). Each prompt x has K responses with
features phi(x, y) in R^d; pi_theta(y|x) is proportional to exp(<theta, phi(x, y)>) with theta shared by all
prompts, and pi_base = pi_theta0 is in the class. Consequently the RLHF optimum pi_base^(1+1/beta)/Z is
pi_{(1+1/beta) theta0}, also in the class (realizability, as Thm. 4.3 assumes). The first d-1 features are
Gaussian ("shared" features the base uses everywhere). The last feature is *rare*: it is non-zero only on y*,
and lifts y* to exactly ``gap`` nats above the best other response. By default y* is an arbitrary response
(rank uniform on the shared features: a needle); ``max_rank`` < K makes it one of the top responses on them.
With many near-ties pi_base(y*|x) is small, so the coverage coefficient C_cov = E_x[1/pi_base(y*|x)] (Eq. 6)
is large.

Why not a tabular class: with one free parameter per (x, y) nothing learned on one prompt transfers to another,
and any method must see y*(x) for every x, i.e. about C_cov samples per prompt; Thm. 4.3's coverage-free
guarantee needs a class of small complexity (here d parameters). We still report the tabular SFT estimator
(the empirical argmax of m samples), whose success is exactly P[y* among m samples].

Methods, all fitted the same way: Adam on theta from theta0 (``steps`` steps, or ``xpo_steps`` per round).
* SFT-Sharpening (Sec. 2.1): m samples per prompt from pi_base, keep the one with the largest log pi_base,
  maximize likelihood (``sft_loss``). Budget = m samples per prompt.
* Reward-DPO, offline (Eq. 4/8): the same m samples paired up, ``reward_dpo_loss``. Budget = m.
* XPO (Algorithm 1): round t draws, for every training prompt, y ~ pi_t and y2 ~ pi_base, adds the pair,
  then takes ``xpo_steps`` Adam steps on ``xpo_loss`` over all pairs so far (warm start). It returns the iterate
  with the largest exact J_beta on held-out validation prompts. Budget = 2 samples per prompt per round.
  The same loop with alpha = 0 (online reward-DPO, no optimism) is reported as an ablation.
Success is E_x[pi(y*|x)] on held-out test prompts (the tabular SFT policy cannot generalize, so its success is
measured on its own training prompts), and the (eps, delta)-sharpening of Def. 3.1 as the fraction of prompts with
pi(y*|x) >= 1 - delta.

What drives XPO here: until some pair contains y*, the square loss says nothing about the rare feature's weight,
and the optimism term alpha * log pi(y2) raises it (raising it moves mass off the base samples y2). Its gradient
is alpha * pi_t(y*|x) * phi_rare, tiny in size, but Adam normalizes each coordinate, so its sign is what
counts; plain gradient descent would explore far more slowly. The analysis assumes an exact argmin instead,
which in this class sends the unexplored weight to infinity in one round.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import SharpenError
from ..train.losses import j_beta_exact, reward_dpo_loss, sft_loss, sharpened_distribution, xpo_loss

__all__ = ["Prompts", "make_theta0", "make_prompts", "coverage_coefficient", "run_theory"]

# success curves in the JSON and plot; XPO keys are indexed by xpo_budgets, the others by budgets
METHODS = ("xpo", "xpo_no_optimism", "dpo", "sft", "sft_tabular")
DTYPE = torch.float32  # ample for d = 8 parameters; twice as fast as float64 here


@dataclass
class Prompts:
    """A set of prompts of the synthetic problem: features of every (prompt, response) and the argmax."""
    phi: torch.Tensor  # (P, K, d)
    y_star: torch.Tensor  # (P,) index of argmax_y pi_base(y|x)

    def logp(self, theta: torch.Tensor) -> torch.Tensor:
        """log pi_theta(y|x) for every prompt and response, (P, K)."""
        return torch.log_softmax(self.phi @ theta, dim=-1)

    def success(self, theta: torch.Tensor, delta: float) -> tuple[float, float]:
        """(E_x[pi(y*|x)], P_x[pi(y*|x) >= 1 - delta]) for the policy pi_theta."""
        p_star = self.logp(theta).exp()[torch.arange(len(self.y_star)), self.y_star]  # (P,)
        return p_star.mean().item(), (p_star >= 1 - delta).double().mean().item()


def make_theta0(dim: int, spread: float, gen: torch.Generator) -> torch.Tensor:
    """Base parameters: shared part of norm ``spread`` (shared logits ~ N(0, spread^2)), rare weight 1."""
    shared = torch.randn(dim - 1, generator=gen, dtype=DTYPE)
    return torch.cat([spread * shared / shared.norm(), torch.ones(1, dtype=DTYPE)])


def make_prompts(theta0: torch.Tensor, n_prompts: int, n_responses: int, gap: float, max_rank: int,
                 gen: torch.Generator) -> Prompts:
    """Draw prompts: Gaussian shared features; y* ranks in [1, max_rank) on them and gets the rare feature."""
    if n_responses < 2:
        raise SharpenError(f"need at least 2 responses per prompt, got {n_responses}: raise n_responses")
    dim = theta0.numel()
    rows = torch.arange(n_prompts)
    phi = torch.zeros(n_prompts, n_responses, dim, dtype=DTYPE)
    phi[..., :-1] = torch.randn(n_prompts, n_responses, dim - 1, generator=gen, dtype=DTYPE)
    shared = phi[..., :-1] @ theta0[:-1]  # (P, K) shared part of the base logits
    # rank 0 would make y* the argmax without the rare feature, i.e. learnable from the shared features alone
    rank = torch.randint(1, max(min(max_rank, n_responses), 2), (n_prompts,), generator=gen)
    y_star = shared.argsort(dim=-1, descending=True)[rows, rank]
    others = shared.clone()
    others[rows, y_star] = -math.inf
    # the rare feature puts y* exactly `gap` nats above the best other response under pi_base
    phi[rows, y_star, -1] = (others.max(-1).values + gap - shared[rows, y_star]) / theta0[-1]
    return Prompts(phi=phi, y_star=y_star)


def coverage_coefficient(base_logp: torch.Tensor) -> float:
    """C_cov = E_x[1 / max_y pi_base(y|x)] (Eq. 6) from log-probs of shape (P, K)."""
    return (-base_logp.max(dim=-1).values).exp().mean().item()


def _fit(theta: torch.Tensor, loss_fn, steps: int, lr: float) -> torch.Tensor:
    """Adam steps on loss_fn(theta) from theta, lr decaying linearly to 0; the same fit for every method."""
    theta = theta.clone().requires_grad_()
    opt = torch.optim.Adam([theta], lr=lr)
    for i in range(steps):
        opt.param_groups[0]["lr"] = lr * (1 - i / steps)  # decay: converge instead of hovering at lr
        opt.zero_grad()
        loss_fn(theta).backward()
        opt.step()
    return theta.detach()


def _draw(logp: torch.Tensor, m: int, gen: torch.Generator) -> torch.Tensor:
    """m samples per prompt from exp(logp), (P, m)."""
    return torch.multinomial(logp.exp(), m, replacement=True, generator=gen)


def _sft(train: Prompts, theta0: torch.Tensor, ys: torch.Tensor, steps: int, lr: float):
    """SFT-Sharpening on samples ys (P, m) of pi_base: keep the best by log pi_base, then maximum likelihood.

    Returns (theta, success of the tabular estimator on the training prompts).
    """
    base = train.logp(theta0)  # (P, K)
    best = ys.gather(1, base.gather(1, ys).argmax(1, keepdim=True)).squeeze(1)  # (P,)
    rows = torch.arange(len(best))
    theta = _fit(theta0, lambda th: sft_loss(train.logp(th)[rows, best]), steps, lr)
    # tabular SFT puts all mass on the best sample: success 1 exactly when y* was drawn
    return theta, (best == train.y_star).double().mean().item()


def _pair_loss(train: Prompts, base: torch.Tensor, x, y, y2, beta: float, alpha: float | None):
    def loss(theta: torch.Tensor) -> torch.Tensor:
        logp = train.logp(theta)
        args = (logp[x, y], logp[x, y2], base[x, y], base[x, y2], beta)
        return reward_dpo_loss(*args) if alpha is None else xpo_loss(*args, alpha)

    return loss


def _dpo_offline(train: Prompts, theta0: torch.Tensor, ys: torch.Tensor, beta: float, steps: int,
                 lr: float) -> torch.Tensor:
    """Reward-DPO (Eq. 4/8) on samples ys (P, m) of pi_base, paired as (ys[:, 0], ys[:, 1]), (ys[:, 2], ...)."""
    base = train.logp(theta0)
    if ys.shape[1] == 1:  # one sample per prompt cannot make a pair: pair it with itself (no signal)
        ys = ys.repeat(1, 2)
    half = ys.shape[1] // 2
    x = torch.arange(base.shape[0]).repeat_interleave(half)
    y, y2 = ys[:, 0:2 * half:2].reshape(-1), ys[:, 1:2 * half:2].reshape(-1)
    return _fit(theta0, _pair_loss(train, base, x, y, y2, beta, None), steps, lr)


def _xpo(train: Prompts, val: Prompts, theta0: torch.Tensor, rounds: int, beta: float, alpha: float,
         gen: torch.Generator, steps: int, lr: float) -> list[torch.Tensor]:
    """XPO (Algorithm 1) for `rounds` rounds; returns, after each round, the best iterate so far by J_beta."""
    base = train.logp(theta0)
    val_base = val.logp(theta0).exp()
    rows = torch.arange(base.shape[0])
    theta, xs, ys, y2s = theta0.clone(), [], [], []
    best_j, best_theta, chosen = -math.inf, theta0, []
    for _ in range(rounds):
        xs.append(rows)
        ys.append(_draw(train.logp(theta), 1, gen).squeeze(1))  # y ~ pi_t
        y2s.append(_draw(base, 1, gen).squeeze(1))  # y2 ~ pi_base
        x, y, y2 = torch.cat(xs), torch.cat(ys), torch.cat(y2s)
        theta = _fit(theta, _pair_loss(train, base, x, y, y2, beta, alpha), steps, lr)
        j = j_beta_exact(val.logp(theta).exp(), val_base, beta).mean().item()  # exact: K is enumerable
        if j > best_j:
            best_j, best_theta = j, theta
        chosen.append(best_theta)
    return chosen


def _budgets(cfg: dict[str, Any], key: str) -> list[int]:
    return cfg["xpo_budgets"] if key.startswith("xpo") else cfg["budgets"]


def _first_reaching(budgets: list[int], values: list[float], target: float) -> int | None:
    return next((b for b, v in zip(budgets, values, strict=True) if v >= target), None)


def _one_seed(seed: int, cfg: dict[str, Any]) -> dict[str, Any]:
    gen = torch.Generator().manual_seed(seed)
    theta0 = make_theta0(cfg["dim"], cfg["spread"], gen)
    shape = (cfg["n_responses"], cfg["gap"], cfg["max_rank"], gen)
    train, val, test = (make_prompts(theta0, n, *shape) for n in (cfg["n_train"], cfg["n_val"], cfg["n_test"]))
    delta, beta = cfg["delta"], cfg["beta"]
    test_base = test.logp(theta0)
    star = sharpened_distribution(test_base.exp(), beta)[torch.arange(cfg["n_test"]), test.y_star]
    out: dict[str, Any] = {
        "seed": seed,
        "coverage": coverage_coefficient(test_base),
        "base_success": test.success(theta0, delta)[0],
        "closed_form_success": star.mean().item(),
        **{key: [] for key in ("sft_tabular", "sft", "sft_sharpened", "dpo", "dpo_sharpened")},
    }
    # one pool of base samples per prompt; budget m uses its first m (nested, as the paper subsamples)
    pool = _draw(train.logp(theta0), max(cfg["budgets"]), gen)  # (P, max m)
    for m in cfg["budgets"]:
        theta, tab = _sft(train, theta0, pool[:, :m], cfg["steps"], cfg["lr"])
        out["sft_tabular"].append(tab)
        s, frac = test.success(theta, delta)
        out["sft"].append(s)
        out["sft_sharpened"].append(frac)
        s, frac = test.success(_dpo_offline(train, theta0, pool[:, :m], beta, cfg["steps"], cfg["lr"]), delta)
        out["dpo"].append(s)
        out["dpo_sharpened"].append(frac)
    out["sft_tabular_sharpened"] = list(out["sft_tabular"])  # a point mass: pi(y*) is 0 or 1
    rounds = max(b // 2 for b in cfg["xpo_budgets"])
    for key, alpha in (("xpo", cfg["alpha"]), ("xpo_no_optimism", 0.0)):
        iterates = _xpo(train, val, theta0, rounds, beta, alpha, gen, cfg["xpo_steps"], cfg["lr"])
        xpo = [test.success(iterates[b // 2 - 1], delta) for b in cfg["xpo_budgets"]]
        out[key], out[f"{key}_sharpened"] = [s for s, _ in xpo], [f for _, f in xpo]
    return out


def _mean_std(rows: list[list[float]]) -> tuple[list[float], list[float]]:
    arr = np.asarray(rows, dtype=float)
    return arr.mean(0).tolist(), arr.std(0).tolist()


def _summary(res: dict[str, Any]) -> str:
    target = res["config"]["target"]

    def when(key: str) -> str:
        b = res["reached_target"][key]
        if b is None:
            return f"not within {max(_budgets(res['config'], key))} samples/prompt"
        return f"at {b} samples/prompt"

    return (f"Mean success E[pi(y*|x)] >= {target}: XPO {when('xpo')} (without optimism: "
            f"{when('xpo_no_optimism')}); SFT-Sharpening {when('sft')} (tabular SFT {when('sft_tabular')}); "
            f"offline reward-DPO {when('dpo')}. "
            f"Coverage C_cov = {res['coverage']:.0f}, Thm. 4.1 predicts about C_cov/eps = "
            f"{res['sft_predicted_samples']:.0f} samples/prompt for SFT at eps = {1 - target:.2f}. "
            f"pi_base success {res['base_success']:.4f}; the beta = {res['config']['beta']} optimum "
            f"pi_base^(1+1/beta)/Z reaches {res['closed_form_success']:.3f}.")


def _plot(res: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    cfg, methods = res["config"], res["methods"]
    fig, ax = plt.subplots(figsize=(9.5, 4.8))
    styles = [("xpo", f"XPO (alpha={cfg['alpha']})", "C3", "o"),
              ("xpo_no_optimism", "online reward-DPO (XPO, alpha=0)", "C1", "v"),
              ("dpo", "reward-DPO, offline", "C2", "^"),
              ("sft", "SFT-Sharpening (MLE)", "C0", "s"),
              ("sft_tabular", "SFT-Sharpening (tabular, train prompts)", "C9", "x")]
    for key, label, color, marker in styles:
        xs = _budgets(cfg, key)
        mean, std = np.asarray(methods[key]["mean"]), np.asarray(methods[key]["std"])
        ax.plot(xs, mean, marker=marker, color=color, label=label)
        ax.fill_between(xs, np.clip(mean - std, 0, 1), np.clip(mean + std, 0, 1), color=color, alpha=0.15)
    ax.axhline(res["closed_form_success"], color="k", ls="--", lw=1,
               label=f"closed form pi_base^(1+1/beta), beta={cfg['beta']}")
    ax.axhline(res["base_success"], color="gray", ls=":", lw=1, label="pi_base")
    ax.axvline(res["coverage"], color="C4", ls="-.", lw=1, label=f"C_cov = {res['coverage']:.0f}")
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel("samples per training prompt")
    ax.set_ylabel("success E_x[pi(y*|x)]")
    ax.set_title(f"Linear-softmax class (d={cfg['dim']}), K={cfg['n_responses']} responses, "
                 f"{cfg['n_train']} train prompts; {len(res['seeds'])} seeds, mean ± std", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def run_theory(out_dir: Path, seed: int = 0, n_seeds: int = 5, n_train: int = 32, n_val: int = 64,
               n_test: int = 256, n_responses: int = 2048, dim: int = 8, spread: float = 0.3, gap: float = 0.5,
               max_rank: int | None = None, beta: float = 0.05, alpha: float = 1e-3, delta: float = 0.1,
               budgets: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
               xpo_budgets: tuple[int, ...] = (2, 4, 8, 16, 32, 64), steps: int = 150, xpo_steps: int = 40,
               lr: float = 0.5, target: float = 0.9) -> dict[str, Any]:
    """Run the lab over seeds seed..seed+n_seeds-1; write theory.json and theory.png to out_dir; return the dict."""
    if dim < 2 or n_responses < 2 or n_seeds < 1:
        raise SharpenError("the theory lab needs dim >= 2, n_responses >= 2 and n_seeds >= 1: raise them")
    if not (math.isfinite(beta) and beta > 0) or not (math.isfinite(alpha) and alpha >= 0):
        raise SharpenError(f"the theory lab needs --beta > 0 and --alpha >= 0 (got beta {beta}, alpha {alpha})")
    if any(b < 2 or b % 2 for b in xpo_budgets):
        raise SharpenError(f"XPO budgets count 2 samples per round, got {list(xpo_budgets)}: use even numbers >= 2")
    cfg = dict(n_train=n_train, n_val=n_val, n_test=n_test, n_responses=n_responses, dim=dim, spread=spread,
               gap=gap, max_rank=max_rank or n_responses, beta=beta, alpha=alpha, delta=delta,
               budgets=sorted(budgets), xpo_budgets=sorted(xpo_budgets), steps=steps, xpo_steps=xpo_steps, lr=lr,
               target=target)
    start = time.perf_counter()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tensors here are tiny: extra threads only add contention
    try:
        per_seed = [_one_seed(s, cfg) for s in range(seed, seed + n_seeds)]
    finally:
        torch.set_num_threads(threads)
    methods = {}
    for key in METHODS + tuple(f"{k}_sharpened" for k in METHODS):
        mean, std = _mean_std([r[key] for r in per_seed])
        methods[key] = {"mean": mean, "std": std}
    coverage = float(np.mean([r["coverage"] for r in per_seed]))
    res: dict[str, Any] = {
        "config": cfg,
        "seeds": list(range(seed, seed + n_seeds)),
        "coverage": coverage,
        "sft_predicted_samples": coverage / (1 - target),  # Thm. 4.1: m ~ C_cov / eps
        "base_success": float(np.mean([r["base_success"] for r in per_seed])),
        "closed_form_success": float(np.mean([r["closed_form_success"] for r in per_seed])),
        "methods": methods,
        "per_seed": per_seed,
    }
    res["reached_target"] = {
        key: _first_reaching(_budgets(cfg, key), methods[key]["mean"], target) for key in METHODS
    }
    res["summary"] = _summary(res)
    res["seconds"] = time.perf_counter() - start
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "theory.json").write_text(json.dumps(res, indent=2))
    _plot(res, out_dir / "theory.png")
    return res
