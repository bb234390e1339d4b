"""Sharpening objectives as pure functions of per-sequence log-prob tensors (SHARPENING.md 3.2 and 4).

Every ``*_logp`` argument is a tensor of shape (B,): the summed log-probability of one whole response
(Eq. 2), as returned by the scoring primitive. ``policy_*`` come from the model being trained (with grad),
``base_*`` from the frozen pi_base (no grad needed). Losses average over the batch.

The self-reward is r_self(y|x) = log pi_base(y|x) (Eq. 2), so every "reward" below is a base log-prob.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import SharpenError

__all__ = [
    "sft_loss",
    "reward_dpo_loss",
    "xpo_loss",
    "logistic_dpo_loss",
    "group_advantages",
    "k3_kl",
    "grpo_loss",
    "j_beta_exact",
    "j_beta_estimate",
    "sharpened_distribution",
]


def _check_beta(beta: float) -> None:
    if not beta > 0:
        raise SharpenError(f"beta must be > 0 (the KL weight of Eq. 3), got {beta}: pass a positive --beta")


def _check_shapes(*tensors: torch.Tensor) -> None:
    # Broadcasting (B,) against (B, 1) would silently give a (B, B) loss; insist on equal 1-D shapes.
    shape = tensors[0].shape
    if len(shape) != 1 or any(t.shape != shape for t in tensors):
        shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
        raise SharpenError(f"log-prob tensors must all have the same shape (B,), got {shapes}: "
                           "pass one summed log-prob per sequence")


def sft_loss(policy_logp: torch.Tensor, num_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood of the SFT targets (SFT-Sharpening, Sec. 2.1).

    Without ``num_tokens``: mean over the batch of -log pi(y_i|x_i), the sequence-level objective of the paper.
    With ``num_tokens`` (B,): total NLL / total number of target tokens, i.e. every token weighs the same
    (the usual language-model convention; long responses count more than short ones).
    """
    _check_shapes(policy_logp)
    if num_tokens is None:
        return -policy_logp.mean()
    _check_shapes(policy_logp, num_tokens)
    return -policy_logp.sum() / num_tokens.sum().clamp_min(1)


def _reward_residual(policy_logp_y: torch.Tensor, policy_logp_y2: torch.Tensor, base_logp_y: torch.Tensor,
                     base_logp_y2: torch.Tensor, beta: float, reward_y: torch.Tensor | None = None,
                     reward_y2: torch.Tensor | None = None) -> torch.Tensor:
    # Eq. 4/8: beta*log(pi(y)/pi_base(y)) - beta*log(pi(y')/pi_base(y')) - (r(y) - r(y')), r = r_self = log pi_base
    # by default. With r_self it is zero for every pair exactly when pi = pi_base^(1+1/beta)/Z; with another
    # reward r, when pi = pi_base exp(r / beta) / Z (the KL-regularized optimum).
    _check_beta(beta)
    r_y = base_logp_y if reward_y is None else reward_y
    r_y2 = base_logp_y2 if reward_y2 is None else reward_y2
    _check_shapes(policy_logp_y, policy_logp_y2, base_logp_y, base_logp_y2, r_y, r_y2)
    implicit = beta * (policy_logp_y - base_logp_y) - beta * (policy_logp_y2 - base_logp_y2)  # (B,)
    return implicit - (r_y - r_y2)


def reward_dpo_loss(policy_logp_y: torch.Tensor, policy_logp_y2: torch.Tensor, base_logp_y: torch.Tensor,
                    base_logp_y2: torch.Tensor, beta: float, reward_y: torch.Tensor | None = None,
                    reward_y2: torch.Tensor | None = None) -> torch.Tensor:
    """Reward-based DPO square loss (Eq. 4/8) with r_self = log pi_base (or the given rewards); y, y2 ~ pi_base."""
    res = _reward_residual(policy_logp_y, policy_logp_y2, base_logp_y, base_logp_y2, beta, reward_y, reward_y2)
    return res.square().mean()


def xpo_loss(policy_logp_y: torch.Tensor, policy_logp_y2: torch.Tensor, base_logp_y: torch.Tensor,
             base_logp_y2: torch.Tensor, beta: float, alpha: float, reward_y: torch.Tensor | None = None,
             reward_y2: torch.Tensor | None = None) -> torch.Tensor:
    """Reward-based XPO loss (Algorithm 1): the square loss of Eq. 8 + alpha * mean log pi(y2|x).

    y ~ pi_t (the current policy), y2 ~ pi_base. Minimizing alpha * log pi(y2) pushes mass off the responses the
    base already produces, which is the optimism that drives exploration. Algorithm 1 as printed puts a minus
    before the square term; that is a typo: the analysis (and any sensible minimization) uses a plus.
    """
    res = _reward_residual(policy_logp_y, policy_logp_y2, base_logp_y, base_logp_y2, beta, reward_y, reward_y2)
    return res.square().mean() + alpha * policy_logp_y2.mean()


def logistic_dpo_loss(policy_logp_chosen: torch.Tensor, policy_logp_rejected: torch.Tensor,
                      base_logp_chosen: torch.Tensor, base_logp_rejected: torch.Tensor, beta: float) -> torch.Tensor:
    """Standard DPO, mean of -log sigmoid(beta * margin), for comparison with the square loss.

    For sharpening the pair is ranked by self-reward: "chosen" is the response with the larger log pi_base.
    Unlike Eq. 4 it uses only the ranking, not the size of the reward gap, so its optimum is not pi_beta*.
    """
    _check_beta(beta)
    _check_shapes(policy_logp_chosen, policy_logp_rejected, base_logp_chosen, base_logp_rejected)
    margin = (policy_logp_chosen - base_logp_chosen) - (policy_logp_rejected - base_logp_rejected)  # (B,)
    return -F.logsigmoid(beta * margin).mean()


def group_advantages(rewards: torch.Tensor, kind: str = "grpo", eps: float = 1e-4) -> torch.Tensor:
    """Advantages of G responses per prompt from their rewards, (P, G) -> (P, G).

    grpo (Shao et al. 2024, DeepSeekMath, outcome supervision): (r_i - mean r) / (std r + eps), std unbiased as
    TRL's; mean (Liu et al. 2025, Dr. GRPO): r_i - mean r, no scaling, so a near-unanimous group is not blown up;
    rloo (Ahmadian et al. 2024): r_i - mean of the other G - 1 rewards = G / (G - 1) (r_i - mean r). A group whose
    rewards are all equal gets zero advantages: it carries no signal.
    """
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise SharpenError(f"rewards must be (prompts, group >= 2), got {tuple(rewards.shape)}")
    centered = rewards - rewards.mean(dim=1, keepdim=True)
    if kind == "grpo":
        return centered / (rewards.std(dim=1, keepdim=True) + eps)
    if kind == "mean":
        return centered
    if kind == "rloo":
        g = rewards.shape[1]
        return centered * g / (g - 1)
    raise SharpenError(f"unknown advantage {kind!r}: choose grpo, mean or rloo")


def k3_kl(policy_logp: torch.Tensor, base_logp: torch.Tensor) -> torch.Tensor:
    """Per-token estimate of KL(pi || pi_base) from tokens y_t ~ pi (Schulman's k3): exp(d) - d - 1 with
    d = log pi_base - log pi; non-negative, unbiased, and its gradient pulls log pi toward log pi_base."""
    d = base_logp - policy_logp
    return torch.exp(d) - d - 1


def grpo_loss(policy_logp: torch.Tensor, old_logp: torch.Tensor, base_logp: torch.Tensor,
              advantages: torch.Tensor, clip_eps: float = 0.2, kl_coef: float = 0.0) -> torch.Tensor:
    """The clipped policy-gradient objective of GRPO, negated, averaged over all response tokens of the batch.

    All arguments are per token (K,): log-probs of the sampled tokens under the policy (with grad), under the
    policy that sampled them (pi_old, no grad) and under pi_base, and the advantage of the token's response.
    Per token: -(min(rho A, clip(rho, 1 - eps, 1 + eps) A) - kl_coef k3(pi, pi_base)), rho = pi / pi_old. One
    update per batch of samples (pi_old = pi) gives rho = 1 and the plain policy gradient A grad log pi. Averaging
    over tokens rather than per response first (DAPO's token-level loss) gives every token the same weight, so
    short responses are not favoured.
    """
    _check_shapes(policy_logp, old_logp, base_logp, advantages)
    ratio = torch.exp(policy_logp - old_logp)
    surrogate = torch.minimum(ratio * advantages, torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps) * advantages)
    per_token = -(surrogate - kl_coef * k3_kl(policy_logp, base_logp))
    return per_token.mean() if per_token.numel() else policy_logp.sum() * 0.0


def j_beta_exact(pi_probs: torch.Tensor, base_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """J_beta(pi) = E_pi[log pi_base] - beta * KL(pi || pi_base) for tabular distributions over the last dim.

    Returns one value per prompt (shape ``pi_probs.shape[:-1]``); average it over prompts for E_x.
    Terms with pi(y) = 0 contribute 0 (0 log 0 = 0); the maximum, beta * log sum_y pi_base^(1+1/beta),
    is reached by ``sharpened_distribution`` (Sec. 2.2).
    """
    _check_beta(beta)
    # E_pi[log pb] - beta*E_pi[log pi - log pb] = E_pi[(1+beta) log pb] - beta*E_pi[log pi]
    cross = torch.special.xlogy(pi_probs, base_probs)  # pi * log pb, 0 where pi = 0
    neg_entropy = torch.special.xlogy(pi_probs, pi_probs)
    return ((1 + beta) * cross - beta * neg_entropy).sum(-1)


def j_beta_estimate(policy_logp: torch.Tensor, base_logp: torch.Tensor, beta: float,
                    reward: torch.Tensor | None = None) -> torch.Tensor:
    """Sample estimate of J_beta from log-probs of y ~ pi: mean(r(y)) - beta * mean(log pi - log pi_base), with the
    paper's self-reward r = log pi_base unless `reward` (one value per sample) is given."""
    _check_beta(beta)
    r = base_logp if reward is None else reward
    _check_shapes(policy_logp, base_logp, r)
    return r.mean() - beta * (policy_logp - base_logp).mean()


def sharpened_distribution(base_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """The RLHF-sharpening optimum pi_base^(1+1/beta) / Z over the last dim, computed in log space.

    beta -> 0 gives the argmax of pi_base, beta -> inf gives pi_base itself.
    """
    _check_beta(beta)
    logits = (1 + 1 / beta) * base_probs.log()  # zeros stay at -inf, i.e. probability 0
    return torch.softmax(logits, dim=-1)
