"""Preference losses: against hand formulas (written apart, in numpy), TRL 1.16's own code on the same
log-prob tensors, and float64 gradient checks."""

from __future__ import annotations

import math
from collections import defaultdict
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from honed.train.objectives.preference_losses import dpo_loss, kto_kl_estimate, kto_loss, log1mexp, orpo_loss, rpo_term, simpo_loss

GEN = torch.Generator().manual_seed(0)
PC = -torch.rand(6, generator=GEN, dtype=torch.float64) * 20 - 1  # summed log-probs of chosen answers
PR = -torch.rand(6, generator=GEN, dtype=torch.float64) * 20 - 1
RC = -torch.rand(6, generator=GEN, dtype=torch.float64) * 20 - 1
RR = -torch.rand(6, generator=GEN, dtype=torch.float64) * 20 - 1
LC = torch.tensor([3, 7, 12, 5, 9, 4])
LR = torch.tensor([6, 2, 10, 8, 3, 11])


def _np(t):
    return t.detach().numpy().astype(np.float64)


def _logsig(x):
    return -np.logaddexp(0.0, -x)


def _sig(x):
    return 1.0 / (1.0 + np.exp(-x))


# ---- hand formulas -------------------------------------------------------------------------------


@pytest.mark.parametrize("beta,eps", [(0.1, 0.0), (0.5, 0.0), (0.3, 0.2)])
def test_dpo_sigmoid_matches_hand_formula(beta, eps):
    out = dpo_loss(PC, PR, RC, RR, beta=beta, label_smoothing=eps)
    d = (_np(PC) - _np(RC)) - (_np(PR) - _np(RR))
    want = -(1 - eps) * _logsig(beta * d) - eps * _logsig(-beta * d)
    np.testing.assert_allclose(_np(out.losses), want, rtol=0, atol=1e-9)
    np.testing.assert_allclose(_np(out.chosen_rewards), beta * (_np(PC) - _np(RC)), atol=1e-12)
    np.testing.assert_allclose(_np(out.rejected_rewards), beta * (_np(PR) - _np(RR)), atol=1e-12)


def test_dpo_pinned_value():
    out = dpo_loss(torch.tensor([-5.0]), torch.tensor([-7.0]), torch.tensor([-6.0]), torch.tensor([-6.0]), beta=0.5)
    assert out.losses.item() == pytest.approx(math.log1p(math.exp(-1.0)), abs=1e-7)  # -log σ(0.5 · 2)


def test_ipo_and_robust_match_hand_formula():
    beta, eps = 0.2, 0.1
    ipo = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="ipo", chosen_lengths=LC, rejected_lengths=LR)
    h = (_np(PC) - _np(RC)) / _np(LC) - (_np(PR) - _np(RR)) / _np(LR)
    np.testing.assert_allclose(_np(ipo.losses), (h - 1 / (2 * beta)) ** 2, atol=1e-9)
    robust = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type="robust", label_smoothing=eps)
    d = (_np(PC) - _np(RC)) - (_np(PR) - _np(RR))
    np.testing.assert_allclose(_np(robust.losses), (-(1 - eps) * _logsig(beta * d) + eps * _logsig(-beta * d)) / (1 - 2 * eps), atol=1e-9)


def test_orpo_matches_hand_formula():
    beta = 0.25
    out = orpo_loss(PC, PR, LC, LR, beta=beta)
    mc, mr = _np(PC) / _np(LC), _np(PR) / _np(LR)
    odds = lambda m: m - np.log(1 - np.exp(m))  # noqa: E731  log(p / (1 - p))
    np.testing.assert_allclose(_np(out.losses), -mc - beta * _logsig(odds(mc) - odds(mr)), atol=1e-9)
    np.testing.assert_allclose(_np(out.chosen_rewards), beta * mc, atol=1e-12)


def test_simpo_matches_hand_formula():
    beta, gamma, eps = 2.0, 0.5, 0.1
    out = simpo_loss(PC, PR, LC, LR, beta=beta, gamma=gamma, label_smoothing=eps)
    z = beta * (_np(PC) / _np(LC) - _np(PR) / _np(LR)) - gamma
    np.testing.assert_allclose(_np(out.losses), -(1 - eps) * _logsig(z) - eps * _logsig(-z), atol=1e-9)


def test_kto_matches_hand_formula():
    beta, wd, wu = 0.1, 1.0, 1.33
    desirable = torch.tensor([True, False, True, True, False, False])
    mis_p, mis_r = PR.flip(0), RR.flip(0)
    kl = kto_kl_estimate(mis_p, mis_r)
    z = max(float(np.mean(_np(mis_p) - _np(mis_r))), 0.0)
    assert kl.item() == pytest.approx(z, abs=1e-12)
    out = kto_loss(PC, RC, desirable, kl, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    r = _np(PC) - _np(RC)
    d = desirable.numpy()
    want = np.where(d, wd * (1 - _sig(beta * (r - z))), wu * (1 - _sig(beta * (z - r))))
    np.testing.assert_allclose(_np(out.losses), want, atol=1e-12)
    np.testing.assert_allclose(_np(out.chosen_rewards), beta * r[d], atol=1e-12)
    np.testing.assert_allclose(_np(out.rejected_rewards), beta * r[~d], atol=1e-12)


def test_kl_estimate_is_clamped_and_detached():
    p = torch.tensor([-3.0, -4.0], requires_grad=True)
    kl = kto_kl_estimate(p, torch.tensor([-1.0, -1.0]))
    assert kl.item() == 0.0 and not kl.requires_grad


def test_rpo_term_and_log1mexp():
    np.testing.assert_allclose(_np(rpo_term(PC, LC)), -_np(PC) / _np(LC), atol=1e-12)
    x = torch.tensor([-1e-8, -0.3, -0.7, -5.0, -40.0], dtype=torch.float64)
    np.testing.assert_allclose(_np(log1mexp(x)), [math.log(-math.expm1(v)) for v in x.tolist()], rtol=1e-12, atol=1e-15)


# ---- gradients -----------------------------------------------------------------------------------


def _inputs():
    return [t.clone().requires_grad_(True) for t in (PC[:3], PR[:3], RC[:3], RR[:3])]


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("sigmoid", 0.1), ("robust", 0.2), ("ipo", 0.0)])
def test_dpo_gradients(loss_type, eps):
    f = lambda pc, pr, rc, rr: dpo_loss(pc, pr, rc, rr, beta=0.3, loss_type=loss_type, label_smoothing=eps,  # noqa: E731
                                        chosen_lengths=LC[:3], rejected_lengths=LR[:3]).losses
    assert torch.autograd.gradcheck(f, _inputs())


def test_dpo_gradient_pinned():
    # d/dπc of -logσ(βΔ) is -β·σ(-βΔ); at Δ = 2, β = 0.5: -0.5·σ(-1).
    pc = torch.tensor([-5.0], dtype=torch.float64, requires_grad=True)
    dpo_loss(pc, torch.tensor([-7.0], dtype=torch.float64), torch.tensor([-6.0], dtype=torch.float64),
             torch.tensor([-6.0], dtype=torch.float64), beta=0.5).losses.sum().backward()
    assert pc.grad.item() == pytest.approx(-0.5 / (1 + math.e), abs=1e-12)


def test_orpo_simpo_kto_rpo_gradients():
    pc, pr = PC[:3].clone().requires_grad_(True), PR[:3].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: orpo_loss(a, b, LC[:3], LR[:3], beta=0.2).losses, (pc, pr))
    assert torch.autograd.gradcheck(lambda a, b: simpo_loss(a, b, LC[:3], LR[:3], beta=2.0, gamma=0.4, label_smoothing=0.1).losses, (pc, pr))
    desirable = torch.tensor([True, False, True])
    assert torch.autograd.gradcheck(lambda a: kto_loss(a, RC[:3], desirable, torch.tensor(0.3, dtype=torch.float64), beta=0.1,
                                                       undesirable_weight=1.5).losses, (pc,))
    assert torch.autograd.gradcheck(lambda a: rpo_term(a, LC[:3]), (pc,))


# ---- TRL 1.16 on the same log-prob tensors ---------------------------------------------------------


def _spread(sums: torch.Tensor, lengths: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs whose row sums are `sums` (each spread evenly over its `lengths` tokens), and the mask."""
    mask = torch.zeros(len(sums), width, dtype=torch.long)
    for i, n in enumerate(lengths.tolist()):
        mask[i, width - n :] = 1
    per_token = mask.double() * (sums / lengths.double())[:, None]
    return per_token, mask


def _trl_self(**attrs):
    accelerator = SimpleNamespace(device=torch.device("cpu"), gather_for_metrics=lambda x: x, gather=lambda x: x, unwrap_model=lambda m: m)
    return SimpleNamespace(model=SimpleNamespace(training=True), accelerator=accelerator, _metrics=defaultdict(lambda: defaultdict(list)),
                           _total_train_tokens=0, _tp_size=1, aux_loss_enabled=False, use_weighting=False, **attrs)


@pytest.mark.parametrize("loss_type,eps", [("sigmoid", 0.0), ("ipo", 0.0), ("robust", 0.15)])
def test_dpo_agrees_with_trl(loss_type, eps):
    DPOTrainer = pytest.importorskip("trl").DPOTrainer
    beta, width = 0.3, 16
    pc, mask_c = _spread(PC, LC, width)
    pr, mask_r = _spread(PR, LR, width)
    completion_mask = torch.cat([torch.zeros(12, 1, dtype=torch.long), torch.cat([mask_c, mask_r])], dim=1)  # first token: prompt
    log_probs = torch.cat([pc, pr])
    outputs = SimpleNamespace(log_probs=log_probs, entropy=torch.zeros_like(log_probs), mean_logits=torch.zeros_like(log_probs),
                              is_top1=torch.zeros_like(log_probs, dtype=torch.bool))
    inputs = {"input_ids": torch.zeros(12, width + 1, dtype=torch.long), "attention_mask": torch.ones(12, width + 1, dtype=torch.long),
              "completion_mask": completion_mask, "ref_chosen_logps": RC, "ref_rejected_logps": RR}
    fake = _trl_self(precompute_ref_logps=True, ld_alpha=None, f_divergence_type="reverse_kl", loss_types=[loss_type], loss_weights=[1.0],
                     beta=beta, label_smoothing=eps, args=SimpleNamespace())
    trl_loss = DPOTrainer._compute_loss(fake, lambda **kw: outputs, inputs, False)
    ours = dpo_loss(PC, PR, RC, RR, beta=beta, loss_type=loss_type, label_smoothing=eps, chosen_lengths=LC, rejected_lengths=LR)
    assert ours.losses.mean().item() == pytest.approx(trl_loss.item(), abs=1e-5)
    assert ours.chosen_rewards.mean().item() == pytest.approx(fake._metrics["train"]["rewards/chosen"][-1], abs=1e-5)
    margin = (ours.chosen_rewards - ours.rejected_rewards).mean().item()
    assert margin == pytest.approx(fake._metrics["train"]["rewards/margins"][-1], abs=1e-5)
    accuracy = (ours.chosen_rewards > ours.rejected_rewards).double().mean().item()
    assert accuracy == pytest.approx(fake._metrics["train"]["rewards/accuracies"][-1], abs=1e-6)


def test_orpo_odds_ratio_agrees_with_trl():
    orpo = pytest.importorskip("trl.experimental.orpo")
    beta = 0.25
    fake = SimpleNamespace(beta=beta, accelerator=SimpleNamespace(device=torch.device("cpu")))
    mc, mr = PC / LC, PR / LR
    trl_ratio_term, *_ = orpo.ORPOTrainer.odds_ratio_loss(fake, mc, mr)
    ours = orpo_loss(PC, PR, LC, LR, beta=beta)
    # TRL returns β·logσ(log-odds) and subtracts it from the NLL; ours holds the whole per-pair loss.
    np.testing.assert_allclose(_np(ours.losses), _np(-mc - trl_ratio_term), atol=1e-5)


def test_simpo_agrees_with_trl_cpo():
    cpo = pytest.importorskip("trl.experimental.cpo")
    beta, gamma, eps = 2.0, 0.5, 0.1
    fake = SimpleNamespace(beta=beta, alpha=0.0, loss_type="simpo", simpo_gamma=gamma, label_smoothing=eps,
                           accelerator=SimpleNamespace(device=torch.device("cpu")))
    trl_losses, *_ = cpo.CPOTrainer.cpo_loss(fake, PC / LC, PR / LR)
    np.testing.assert_allclose(_np(simpo_loss(PC, PR, LC, LR, beta=beta, gamma=gamma, label_smoothing=eps).losses), _np(trl_losses), atol=1e-5)


def test_kto_agrees_with_trl():
    KTOTrainer = pytest.importorskip("trl").KTOTrainer
    beta, wd, wu, width = 0.1, 1.0, 1.5, 16
    labels = torch.tensor([True, False, True, True, False, False])
    policy, mask = _spread(PC, LC, width)
    mis_policy, mis_mask = _spread(PR, LR, width)
    pad = torch.zeros(6, 1, dtype=torch.long)
    batch = {"input_ids": torch.zeros(6, width + 1, dtype=torch.long), "attention_mask": torch.ones(6, width + 1, dtype=torch.long),
             "completion_mask": torch.cat([pad, mask], 1), "KL_input_ids": torch.ones(6, width + 1, dtype=torch.long),
             "KL_attention_mask": torch.ones(6, width + 1, dtype=torch.long), "KL_completion_mask": torch.cat([pad, mis_mask], 1),
             "label": labels, "ref_logps": RC, "ref_KL_logps": RR}

    def model(**kw):
        lp = mis_policy if bool(kw["input_ids"][0, 0] == 1) else policy
        return SimpleNamespace(log_probs=lp, entropy=torch.zeros_like(lp), mean_logits=torch.zeros_like(lp))

    fake = _trl_self(precompute_ref_logps=True, calculate_KL=True, loss_type="kto", beta=beta, desirable_weight=wd, undesirable_weight=wu)
    fake._compute_kl_logps = lambda m, b: KTOTrainer._compute_kl_logps(fake, m, b)
    trl_loss = KTOTrainer._compute_loss(fake, model, batch, False)
    kl = kto_kl_estimate(PR, RR)
    assert kl.item() == pytest.approx(fake._metrics["train"]["kl"][-1], abs=1e-6)
    ours = kto_loss(PC, RC, labels, kl, beta=beta, desirable_weight=wd, undesirable_weight=wu)
    assert ours.losses.mean().item() == pytest.approx(trl_loss.item(), abs=1e-5)
