"""KTO (Ethayarajh et al. 2024): unpaired desirable/undesirable answers, each against a KL reference point.

Each item is two sequences in the same packed forward: the sample itself (sequence 2k) and its
prompt followed by another sample's answer (2k+1). The mismatched sequences give KTO's reference
point z = mean log π/ref over the micro-batch, detached and clamped at 0 (`kto_kl_estimate`);
the pairing is fixed when the data is tokenized (`honed.data.preference_batch`), so cached
reference log-probs stay valid. The step averages over samples.

Metrics (summed per micro-batch): rewards/chosen over `desirable` samples, rewards/rejected over
`undesirable` ones, kl (z × samples; divide by `samples`).

>>> KTOObjective().name
'kto'
"""

from __future__ import annotations

from honed.train.objectives.base import ObjectiveLoss, register_objective
from honed.train.objectives.preference import PairwiseObjective, n_items, token_logps
from honed.train.objectives.preference_losses import kto_kl_estimate, kto_loss


class KTOObjective(PairwiseObjective):
    name = "kto"
    kto = True

    def loss(self, path, model, batch) -> ObjectiveLoss:
        from honed.data.preference_batch import sequence_logps

        n = n_items(batch)
        logps, counts = sequence_logps(token_logps(path, model, batch), batch, 2 * n)
        ref = self.reference_logps(path, model, batch, n).to(logps.dtype)
        kl = kto_kl_estimate(logps[1::2], ref[1::2])
        desirable = batch["desirable"].to(logps.device)
        s = self.settings
        out = kto_loss(logps[0::2], ref[0::2], desirable, kl, beta=s.beta, desirable_weight=s.kto_desirable_weight,
                       undesirable_weight=s.kto_undesirable_weight)
        losses = out.losses
        if s.rpo_alpha:  # an SFT term on the desirable answers only
            losses = losses + s.rpo_alpha * desirable * (-logps[0::2] / counts[0::2].clamp_min(1))
        metrics = {
            "samples": n,
            "desirable": int(desirable.sum()),
            "undesirable": int((~desirable).sum()),
            "rewards/chosen": float(out.chosen_rewards.sum()),
            "rewards/rejected": float(out.rejected_rewards.sum()),
            "kl": float(kl) * n,
        }
        return ObjectiveLoss(loss_sum=losses.sum(), weight=n, metrics=metrics)

    def step_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """Rewards as means over the desirable / undesirable samples, kl as the mean over micro-batches' samples."""
        out = {k: sums[k] for k in ("samples", "desirable", "undesirable") if k in sums}
        if sums.get("desirable"):
            out["rewards/chosen"] = sums["rewards/chosen"] / sums["desirable"]
        if sums.get("undesirable"):
            out["rewards/rejected"] = sums["rewards/rejected"] / sums["undesirable"]
        if "rewards/chosen" in out and "rewards/rejected" in out:
            out["rewards/margin"] = out["rewards/chosen"] - out["rewards/rejected"]
        if sums.get("samples"):
            out["kl"] = sums["kl"] / sums["samples"]
        return out


register_objective("kto", KTOObjective)
