"""Losses against hand-computed numbers, their gradients, and closed-form optima (SHARPENING.md 3.2)."""

from __future__ import annotations

import math

import pytest
import torch

from sharpen.errors import SharpenError
from sharpen.train.losses import (
    j_beta_estimate,
    j_beta_exact,
    logistic_dpo_loss,
    reward_dpo_loss,
    sft_loss,
    sharpened_distribution,
    xpo_loss,
)

T = torch.tensor
# Two pairs used throughout: residuals worked out by hand below.
PY, PY2 = T([-1.0, -2.0], dtype=torch.float64), T([-3.0, -1.0], dtype=torch.float64)
BY, BY2 = T([-2.0, -2.0], dtype=torch.float64), T([-2.5, -1.0], dtype=torch.float64)


def test_sft_loss_hand_values():
    assert sft_loss(T([-1.0, -3.0])).item() == pytest.approx(2.0)
    # per-token: total NLL 4 over 6 tokens
    assert sft_loss(T([-1.0, -3.0]), num_tokens=T([2, 4])).item() == pytest.approx(4 / 6)


def test_reward_dpo_loss_hand_values():
    # row 1: 0.5*(-1+2) - 0.5*(-3+2.5) - (-2+2.5) = 0.5 + 0.25 - 0.5 = 0.25
    # row 2: 0.5*(-2+2) - 0.5*(-1+1) - (-2+1)     = 1
    assert reward_dpo_loss(PY, PY2, BY, BY2, beta=0.5).item() == pytest.approx((0.25**2 + 1.0) / 2)


def test_xpo_loss_hand_values():
    # square term as above, plus alpha * mean(policy log pi(y2)) = 0.1 * (-2)
    assert xpo_loss(PY, PY2, BY, BY2, beta=0.5, alpha=0.1).item() == pytest.approx(0.53125 - 0.2)
    assert xpo_loss(PY, PY2, BY, BY2, beta=0.5, alpha=0.0).item() == pytest.approx(0.53125)


def test_logistic_dpo_loss_hand_values():
    # margins: (1 - (-0.5)) = 1.5 and (0 - 0) = 0; beta*margin = 0.75 and 0
    expected = (math.log1p(math.exp(-0.75)) + math.log(2)) / 2
    assert logistic_dpo_loss(PY, PY2, BY, BY2, beta=0.5).item() == pytest.approx(expected)


def test_gradients_match_hand_derivation():
    beta, alpha = 0.5, 0.1
    py, py2 = PY.clone().requires_grad_(), PY2.clone().requires_grad_()
    xpo_loss(py, py2, BY, BY2, beta, alpha).backward()
    res = T([0.25, 1.0], dtype=torch.float64)
    # d/d logp_y of mean(res^2) = 2*beta*res/B; d/d logp_y2 = -2*beta*res/B + alpha/B
    torch.testing.assert_close(py.grad, 2 * beta * res / 2)
    torch.testing.assert_close(py2.grad, -2 * beta * res / 2 + alpha / 2)

    pc, pr = PY.clone().requires_grad_(), PY2.clone().requires_grad_()
    logistic_dpo_loss(pc, pr, BY, BY2, beta).backward()
    margins = T([1.5, 0.0], dtype=torch.float64)
    torch.testing.assert_close(pc.grad, -beta * torch.sigmoid(-beta * margins) / 2)
    torch.testing.assert_close(pr.grad, beta * torch.sigmoid(-beta * margins) / 2)


def test_bad_inputs_raise_one_line_errors():
    with pytest.raises(SharpenError, match="beta"):
        reward_dpo_loss(PY, PY2, BY, BY2, beta=0.0)
    with pytest.raises(SharpenError, match="same shape"):
        reward_dpo_loss(PY, PY2.unsqueeze(1), BY, BY2, beta=1.0)


def test_sharpened_distribution_hand_values_and_log_space():
    got = sharpened_distribution(T([0.5, 0.25, 0.25, 0.0], dtype=torch.float64), beta=1.0)
    torch.testing.assert_close(got, T([2 / 3, 1 / 6, 1 / 6, 0.0], dtype=torch.float64))
    # probabilities that underflow if powered directly: 1e-200^11 = 0 in float64, fine in log space
    tiny = sharpened_distribution(T([1e-200, 1e-201], dtype=torch.float64), beta=0.1)
    torch.testing.assert_close(tiny, T([1 / (1 + 1e-11), 1e-11 / (1 + 1e-11)], dtype=torch.float64))


def test_j_beta_exact_hand_value():
    # point mass on a 50/50 base: E[log pb] = -log 2, KL = log 2
    got = j_beta_exact(T([1.0, 0.0], dtype=torch.float64), T([0.5, 0.5], dtype=torch.float64), beta=1.0)
    assert got.item() == pytest.approx(-2 * math.log(2))


@pytest.mark.parametrize("beta", [0.25, 1.0, 4.0])
def test_j_beta_exact_is_maximized_by_the_closed_form(beta):
    gen = torch.Generator().manual_seed(0)
    base = torch.softmax(2 * torch.randn(5, 8, generator=gen, dtype=torch.float64), -1)  # (P, K)
    star = sharpened_distribution(base, beta)
    j_star = j_beta_exact(star, base, beta)  # (P,)
    # closed-form value of the maximum: beta * log sum_y pi_base^(1+1/beta)
    torch.testing.assert_close(j_star, beta * torch.logsumexp((1 + 1 / beta) * base.log(), -1))
    for scale in (1e-3, 0.1, 1.0):
        for _ in range(20):
            other = torch.softmax(star.log() + scale * torch.randn(5, 8, generator=gen, dtype=torch.float64), -1)
            assert (j_beta_exact(other, base, beta) < j_star).all()
    # a point mass on the argmax is worse too (it pays the KL)
    point = torch.nn.functional.one_hot(base.argmax(-1), 8).to(torch.float64)
    assert (j_beta_exact(point, base, beta) < j_star).all()


def test_j_beta_estimate_matches_exact_on_samples():
    gen = torch.Generator().manual_seed(1)
    base = torch.softmax(torch.randn(8, generator=gen, dtype=torch.float64), -1)
    pi = torch.softmax(2 * torch.randn(8, generator=gen, dtype=torch.float64), -1)
    ys = torch.multinomial(pi, 200_000, replacement=True, generator=gen)
    est = j_beta_estimate(pi.log()[ys], base.log()[ys], beta=0.5)
    assert est.item() == pytest.approx(j_beta_exact(pi, base, 0.5).item(), abs=0.02)


def _base_problem(n_prompts: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.softmax(1.5 * torch.randn(n_prompts, 8, generator=gen, dtype=torch.float64), -1)  # (P, K)


def _pairs_from_base(base: torch.Tensor, n_pairs: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    n_prompts = base.shape[0]
    x = torch.arange(n_prompts).repeat_interleave(n_pairs)  # (B,)
    y = torch.multinomial(base, n_pairs, replacement=True, generator=gen).reshape(-1)
    y2 = torch.multinomial(base, n_pairs, replacement=True, generator=gen).reshape(-1)
    return x, y, y2


def _fit_tabular(base, x, y, y2, loss_fn) -> torch.Tensor:
    """Minimize loss_fn over a tabular softmax policy (one logit per prompt and response), from pi_base."""
    theta = base.log().clone().requires_grad_()
    opt = torch.optim.LBFGS([theta], max_iter=200, tolerance_grad=1e-9, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")
    base_logp = base.log()

    def closure():
        opt.zero_grad()
        logp = torch.log_softmax(theta, -1)
        loss = loss_fn(logp[x, y], logp[x, y2], base_logp[x, y], base_logp[x, y2])
        loss.backward()
        return loss

    opt.step(closure)
    return torch.softmax(theta.detach(), -1)


def _tv(p: torch.Tensor, q: torch.Tensor) -> float:
    return 0.5 * (p - q).abs().sum(-1).max().item()


@pytest.mark.parametrize("n_prompts", [1, 4])
@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
def test_reward_dpo_reaches_the_closed_form(beta, n_prompts):
    base = _base_problem(n_prompts)
    x, y, y2 = _pairs_from_base(base, 400)
    pi = _fit_tabular(base, x, y, y2, lambda a, b, c, d: reward_dpo_loss(a, b, c, d, beta))
    assert _tv(pi, sharpened_distribution(base, beta)) < 1e-2
    assert _tv(base, sharpened_distribution(base, beta)) > 0.05  # the check is not vacuous


@pytest.mark.parametrize("n_prompts", [1, 4])
@pytest.mark.parametrize("beta", [0.5, 1.0, 4.0])
def test_xpo_with_small_alpha_reaches_the_closed_form(beta, n_prompts):
    base = _base_problem(n_prompts, seed=1)
    x, y, y2 = _pairs_from_base(base, 400, seed=1)
    pi = _fit_tabular(base, x, y, y2, lambda a, b, c, d: xpo_loss(a, b, c, d, beta, alpha=1e-3))
    assert _tv(pi, sharpened_distribution(base, beta)) < 1e-2
    # a large optimism weight moves the minimizer away: the alpha term really enters the loss
    far = _fit_tabular(base, x, y, y2, lambda a, b, c, d: xpo_loss(a, b, c, d, beta, alpha=beta**2))
    assert _tv(far, sharpened_distribution(base, beta)) > 1e-2


def test_xpo_optimism_moves_mass_to_unseen_responses():
    # Response 7 never appears in the data: the square loss leaves its logit alone, the optimism term
    # alpha * log pi(y2) lowers the mass of what pi_base produced and so raises the unseen response.
    beta = 1.0
    base = _base_problem(1, seed=3)
    x, y, y2 = _pairs_from_base(base[:, :7] / base[:, :7].sum(), 200, seed=3)
    dpo = _fit_tabular(base, x, y, y2, lambda a, b, c, d: reward_dpo_loss(a, b, c, d, beta))
    xpo = _fit_tabular(base, x, y, y2, lambda a, b, c, d: xpo_loss(a, b, c, d, beta, alpha=0.1))
    assert xpo[0, 7] > 2 * dpo[0, 7]


def test_logistic_dpo_optimum_differs_from_square_loss():
    # Ranking-only DPO has no finite optimum matching pi_beta*: it keeps pushing the ranked-first response.
    beta = 1.0
    base = _base_problem(1, seed=2)
    x, y, y2 = _pairs_from_base(base, 400, seed=2)
    keep = y != y2
    x, y, y2 = x[keep], y[keep], y2[keep]
    swap = base[x, y] < base[x, y2]
    chosen, rejected = torch.where(swap, y2, y), torch.where(swap, y, y2)
    pi = _fit_tabular(base, x, chosen, rejected, lambda a, b, c, d: logistic_dpo_loss(a, b, c, d, beta))
    assert _tv(pi, sharpened_distribution(base, beta)) > 0.05
    assert pi.argmax() == base.argmax()
