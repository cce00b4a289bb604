"""Preference losses as pure tensor functions of summed sequence log-probs (one value per pair/sample).

Inputs are the summed log-probabilities of each answer's tokens under the policy (and, for DPO and
KTO, the reference), plus answer lengths where a loss normalises by length. Each returns the loss
of every pair and the "rewards" honed logs (TRL's conventions, so curves compare):

| loss | per pair | reward |
|---|---|---|
| DPO `sigmoid` (+ label smoothing ε, cDPO) | -(1-ε)·logσ(βΔ) - ε·logσ(-βΔ), Δ = (πc - refc) - (πr - refr) | β(π - ref) |
| DPO `ipo` | (Δ/len - 1/(2β))², log-ratios divided by answer length (as TRL and the IPO authors do) | β(π - ref) |
| DPO `robust` | [-(1-ε)·logσ(βΔ) + ε·logσ(-βΔ)] / (1 - 2ε) | β(π - ref) |
| ORPO | -πc/lenc - β·logσ(log-odds(π̄c) - log-odds(π̄r)), π̄ = π/len | β·π̄ |
| SimPO | -(1-ε)·logσ(β(π̄c - π̄r) - γ) - ε·logσ(-(β(π̄c - π̄r) - γ)) | β·π̄ |
| KTO | w_d·(1 - σ(β(r - z))) or w_u·(1 - σ(β(z - r))), r = π - ref, z = KL estimate | β·r |

RPO's SFT term (`rpo_alpha`) adds α·(-πc/lenc), the chosen answer's mean token NLL, to each pair.

>>> import torch
>>> out = dpo_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]), torch.tensor([-6.0]), beta=0.5)
>>> round(out.losses.item(), 4), out.chosen_rewards.item(), out.rejected_rewards.item()
(0.3133, 0.5, -0.5)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

DPO_LOSS_TYPES = ("sigmoid", "ipo", "robust")


@dataclass
class PreferenceLosses:
    losses: torch.Tensor            # one per pair (KTO: per sample), with gradients
    chosen_rewards: torch.Tensor    # detached (KTO: the desirable samples')
    rejected_rewards: torch.Tensor  # detached (KTO: the undesirable samples')


def _lengths(lengths: torch.Tensor) -> torch.Tensor:
    return lengths.to(torch.float64 if lengths.dtype == torch.float64 else torch.float32).clamp_min(1)


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, *,
             beta: float, loss_type: str = "sigmoid", label_smoothing: float = 0.0,
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None) -> PreferenceLosses:
    """DPO and its IPO and robust variants (Rafailov et al. 2023; Azar et al. 2023; Chowdhury et al. 2024)."""
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * delta) - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "robust":
        losses = (-(1 - label_smoothing) * F.logsigmoid(beta * delta) + label_smoothing * F.logsigmoid(-beta * delta)) / (1 - 2 * label_smoothing)
    elif loss_type == "ipo":
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("ipo needs the answer lengths")
        normalised = chosen_ratio / _lengths(chosen_lengths) - rejected_ratio / _lengths(rejected_lengths)
        losses = (normalised - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; use one of {', '.join(DPO_LOSS_TYPES)}")
    return PreferenceLosses(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - exp(x)) for x < 0, accurate at both ends (Mächler 2012): expm1 near 0, log1p far from it."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def orpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, *,
              beta: float) -> PreferenceLosses:
    """ORPO (Hong et al. 2024): the chosen answer's NLL plus β times the log odds-ratio penalty; no reference model.

    Odds use the length-averaged log-probs, as in the paper's code and TRL."""
    mean_chosen = policy_chosen / _lengths(chosen_lengths)
    mean_rejected = policy_rejected / _lengths(rejected_lengths)
    log_odds = (mean_chosen - mean_rejected) - (log1mexp(mean_chosen) - log1mexp(mean_rejected))
    losses = -mean_chosen - beta * F.logsigmoid(log_odds)
    return PreferenceLosses(losses, beta * mean_chosen.detach(), beta * mean_rejected.detach())


def simpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, chosen_lengths: torch.Tensor, rejected_lengths: torch.Tensor, *,
               beta: float, gamma: float, label_smoothing: float = 0.0) -> PreferenceLosses:
    """SimPO (Meng et al. 2024): length-normalised log-prob margin with a target margin γ; no reference model."""
    mean_chosen = policy_chosen / _lengths(chosen_lengths)
    mean_rejected = policy_rejected / _lengths(rejected_lengths)
    logits = beta * (mean_chosen - mean_rejected) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(logits) - label_smoothing * F.logsigmoid(-logits)
    return PreferenceLosses(losses, beta * mean_chosen.detach(), beta * mean_rejected.detach())


def kto_kl_estimate(policy_mismatched: torch.Tensor, ref_mismatched: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z: the batch mean of log π/ref on mismatched prompt/answer pairs, detached and
    clamped at 0 (Ethayarajh et al. 2024, §4: a biased but stable estimate of KL(π‖ref); no gradient flows)."""
    return (policy_mismatched - ref_mismatched).mean().detach().clamp_min(0)


def kto_loss(policy: torch.Tensor, ref: torch.Tensor, desirable: torch.Tensor, kl: torch.Tensor, *, beta: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> PreferenceLosses:
    """KTO's value loss for unpaired samples (`desirable` is a bool per sample)."""
    ratio = policy - ref
    value = torch.where(desirable, torch.sigmoid(beta * (ratio - kl)), torch.sigmoid(beta * (kl - ratio)))
    weights = torch.where(desirable, torch.full_like(ratio, desirable_weight), torch.full_like(ratio, undesirable_weight))
    rewards = beta * ratio.detach()
    return PreferenceLosses(weights * (1 - value), rewards[desirable], rewards[~desirable])


def rpo_term(policy_chosen: torch.Tensor, chosen_lengths: torch.Tensor) -> torch.Tensor:
    """RPO's SFT term (Pang et al. 2024): the chosen answer's mean token negative log-likelihood, per pair."""
    return -policy_chosen / _lengths(chosen_lengths)
