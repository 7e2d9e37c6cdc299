"""Known failure signatures of GAN training, watched on the logged (process-averaged) statistics."""

from __future__ import annotations

import statistics
from typing import Any

# Probabilities are sigmoid(logit) only for losses whose logits are log-odds.
PROBABILISTIC_GAN_TYPES = ("vanilla", "ragan")


class GANHealth:
    """Counts consecutive log intervals showing a failure signature; warns once it has persisted.

    Signatures (each must hold for ``patience`` consecutive logs):

    - ``fake_prob_collapsed``: D(G(x)) stays below ``fake_prob_floor``: D rejects every SR image and
      the generator's adversarial gradient vanishes;
    - ``discriminator_overpowering``: additionally D(y) above ``real_prob_ceiling``: D separates
      the two perfectly, and stays there for twice the patience;
    - ``adversarial_loss_exploding``: the generator's adversarial loss exceeds
      ``adversarial_loss_factor`` times its median over the first ``patience`` logs of the
      adversarial phase;
    - ``discriminator_not_learning``: D trains, yet D(y) - D(G(x)) stays below ``min_prob_gap``:
      D does not tell real from SR, so the generator's adversarial term carries no information.
      The classic cause is a deep D without normalisation whose initialisation lets the input's
      signal vanish: its logits are all bias, D(y) = D(G(x)) = 0.5 and the real and fake halves
      of its gradient cancel (a tiny ``d_grad_norm``, shown in the message). The gradient norm
      is not part of the test: a stuck D's last bias still gets a gradient until D(.) = 0.5, and
      its size depends on D's width.

    A warning is issued once per episode; the signature re-arms after it clears.
    """

    def __init__(
        self,
        patience: int = 5,
        fake_prob_floor: float = 0.05,
        real_prob_ceiling: float = 0.95,
        adversarial_loss_factor: float = 10.0,
        probabilistic: bool = True,
        min_prob_gap: float = 0.01,
    ) -> None:
        if not 0 <= min_prob_gap < 1:
            raise ValueError(f"trainer.health.min_prob_gap must be in [0, 1), got {min_prob_gap}")
        self.patience = patience
        self.fake_prob_floor, self.real_prob_ceiling = fake_prob_floor, real_prob_ceiling
        self.min_prob_gap = min_prob_gap
        self.adversarial_loss_factor = adversarial_loss_factor
        self.probabilistic = probabilistic
        self.counts: dict[str, int] = {}
        self.reference: list[float] = []
        self.warnings: dict[str, str] = {}

    def _signatures(self, logs: dict[str, float]) -> dict[str, tuple[bool, int, str]]:
        found: dict[str, tuple[bool, int, str]] = {}
        real, fake = logs.get("train/d_real_prob"), logs.get("train/d_fake_prob")
        if self.probabilistic and real is not None and fake is not None:
            found["fake_prob_collapsed"] = (
                fake < self.fake_prob_floor,
                self.patience,
                f"D(G(x)) = {fake:.3g} < {self.fake_prob_floor}: the discriminator rejects every SR image",
            )
            found["discriminator_overpowering"] = (
                fake < self.fake_prob_floor and real > self.real_prob_ceiling,
                2 * self.patience,
                f"D(y) = {real:.3g}, D(G(x)) = {fake:.3g}: the discriminator separates real and SR perfectly",
            )
            grad = logs.get("train/d_grad_norm")
            found["discriminator_not_learning"] = (
                real - fake < self.min_prob_gap,
                self.patience,
                f"D(y) = {real:.4g}, D(G(x)) = {fake:.4g} (less than {self.min_prob_gap:g} apart"
                + (f", d_grad_norm = {grad:.3g}" if grad is not None else "")
                + "): the discriminator does not tell real from SR, the adversarial term carries no signal",
            )
        adv = logs.get("train/g_adversarial")
        if adv is not None:
            if len(self.reference) < self.patience:
                self.reference.append(adv)
            else:
                limit = self.adversarial_loss_factor * abs(statistics.median(self.reference))
                found["adversarial_loss_exploding"] = (
                    abs(adv) > limit > 0,
                    self.patience,
                    f"adversarial loss {adv:.4g} > {self.adversarial_loss_factor:g} x its early median",
                )
        return found

    def update(self, step: int, logs: dict[str, float]) -> dict[str, str]:
        """Feed one log interval's means; returns the warnings that became due at this step."""
        due: dict[str, str] = {}
        for name, (present, patience, message) in self._signatures(logs).items():
            self.counts[name] = self.counts.get(name, 0) + 1 if present else 0
            if self.counts[name] == patience:
                due[name] = f"step {step}: {message} for {patience} log intervals"
        self.warnings.update(due)
        return due

    def state_dict(self) -> dict[str, Any]:
        return {"counts": dict(self.counts), "reference": list(self.reference), "warnings": dict(self.warnings)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts = dict(state["counts"])
        self.reference = list(state["reference"])
        self.warnings = dict(state["warnings"])
