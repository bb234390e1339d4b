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


def j_beta_estimate(policy_logp: torch.Tensor, base_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """Sample estimate of J_beta from log-probs of y ~ pi: mean(log pi_base) - beta * mean(log pi - log pi_base)."""
    _check_beta(beta)
    _check_shapes(policy_logp, base_logp)
    return base_logp.mean() - beta * (policy_logp - base_logp).mean()


def sharpened_distribution(base_probs: torch.Tensor, beta: float) -> torch.Tensor:
    """The RLHF-sharpening optimum pi_base^(1+1/beta) / Z over the last dim, computed in log space.

    beta -> 0 gives the argmax of pi_base, beta -> inf gives pi_base itself.
    """
    _check_beta(beta)
    logits = (1 + 1 / beta) * base_probs.log()  # zeros stay at -inf, i.e. probability 0
    return torch.softmax(logits, dim=-1)
