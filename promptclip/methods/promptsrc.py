"""PromptSRC (Khattak et al., ICCV 2023): IVLP prompts that regulate themselves against the frozen model.

The ``promptsrc`` loss adds three terms to the cross-entropy (reference: muzairkhattak/PromptSRC,
``trainers/promptsrc.py``, ``forward_backward``):

- ``text_weight · L1(w̃, w^zs)``: normalised prompted class features against the frozen ones, the mean of the
  per-template features over the 60 ImageNet templates (not normalised per template, then normalised once);
- ``image_weight · L1(z̃, z^zs)``: normalised prompted image features against the frozen, unprompted ones of the same
  augmented batch;
- ``logits_weight · KL(p^zs ‖ p̃)`` at temperature ``T``, summed and divided by ``B · C`` (the reference's scaling).

The ``gpa`` callback is Gaussian prompt aggregation: after epoch ``e`` (1-based) of ``N`` it adds
``w_e · prompts`` to a running sum, ``w_e = pdf(e; μ, σ) / Σ_{k=1..N} pdf(k; μ, σ)``, and at the end of training the
prompts become that sum. The reference sums the whole state dict, frozen weights included (which fp16 rounding then
perturbs slightly); here only the prompts are averaged, as the frozen weights are identical in every epoch.
"""
from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F

from ..callbacks import Callback
from ..errors import ConfigError
from ..losses import ModelOutput, PrepareContext, ZeroShotAnchoredLoss
from ..options.methods import GPAConfig, PromptSRCConfig
from ..registry import CALLBACKS, LOSSES


@LOSSES.register("promptsrc")
class SelfRegulation(ZeroShotAnchoredLoss):
    """PromptSRC's mutual-agreement terms; the frozen image features come from :class:`ModelOutput` (once per batch)."""

    Config = PromptSRCConfig
    uses_frozen_image_features = True

    def forward(self, output: ModelOutput, labels: torch.Tensor) -> torch.Tensor:
        text = output.text_features.float()
        cfg = self.cfg
        zeroshot = self.anchors(text)
        text_term = F.l1_loss(text, zeroshot.expand_as(text))
        image = output.image_features.float()
        image_term = F.l1_loss(image, output.frozen_image_features.float())
        logits = output.logits.float()
        t = cfg.temperature
        kl = F.kl_div(F.log_softmax(logits / t, dim=-1), F.log_softmax(output.zeroshot_logits(zeroshot).float() / t,
                                                                           dim=-1), reduction="sum", log_target=True)
        logits_term = kl * t * t / logits.numel()
        return cfg.text_weight * text_term + cfg.image_weight * image_term + cfg.logits_weight * logits_term


def gaussian_weights(epochs: int, mean: float, std: float) -> torch.Tensor:
    """``w_e = pdf(e; mean, std) / Σ_k pdf(k; mean, std)`` for ``e = 1..epochs`` (float64)."""
    e = torch.arange(1, epochs + 1, dtype=torch.float64)
    pdf = torch.exp(-0.5 * ((e - mean) / std) ** 2) / (std * math.sqrt(2 * math.pi))
    if float(pdf.sum()) == 0.0:
        raise ConfigError(f"callbacks.gpa: a Gaussian at epoch {mean:g} with width {std:g} gives every one of the "
                          f"{epochs} epochs weight 0; put callbacks.gpa.mean within 1..{epochs} or widen std.")
    return pdf / pdf.sum()


@CALLBACKS.register("gpa")
class GaussianPromptAggregation(Callback):
    """Averages the prompts over epochs with Gaussian weights; the averaged prompts are the ones saved and tested."""

    Config = GPAConfig

    def __init__(self, cfg):
        super().__init__(cfg)
        self.weights = torch.empty(0, dtype=torch.float64)
        self.sum: Dict[str, torch.Tensor] = {}
        self.epochs_done = 0

    def prepare(self, context: PrepareContext, model) -> None:
        self.weights = gaussian_weights(context.epochs, self.cfg.mean, self.cfg.std)

    @staticmethod
    def prompts(model) -> Dict[str, torch.nn.Parameter]:
        return {f"{side}.{name}": p for side, learner in model.learners().items()
                for name, p in learner.named_parameters() if p.requires_grad}

    def on_epoch_end(self, epoch: int, model) -> None:
        w = float(self.weights[epoch])
        for name, p in self.prompts(model).items():
            value = p.detach().double() * w
            self.sum[name] = self.sum[name] + value if name in self.sum else value
        self.epochs_done = epoch + 1

    def on_train_end(self, model) -> None:
        if self.epochs_done != len(self.weights):
            raise ConfigError(f"callbacks.gpa averaged {self.epochs_done} of {len(self.weights)} epochs: it must see "
                              f"every epoch (train.max_steps_per_epoch is fine, a changed train.epochs is not).")
        with torch.no_grad():
            for name, p in self.prompts(model).items():
                p.copy_(self.sum[name].to(p.dtype))

    def state_dict(self) -> dict:
        return {"sum": dict(self.sum), "epochs_done": self.epochs_done}

    def load_state_dict(self, state: dict) -> None:
        self.sum = {name: value.double() for name, value in state["sum"].items()}
        self.epochs_done = int(state["epochs_done"])
