"""LP++ (Huang et al., CVPR 2024): a linear probe on frozen features blended with zero-shot CLIP by learned
per-class weights, fitted full-batch with step sizes computed from the data.

``logits = f·Wᵀ + b + α ⊙ (f·Tᵀ)`` (no logit scale), ``f`` normalised image features ``[B,E]``, ``T`` the zero-shot
class weights ``[C,E]``, ``W [C,E]``, ``b [C]``, ``α [C]``. As the reference (FereshteShakeri/FewShot-CLIP-Strong-
Baseline, methods/linear_probe_p2.py) computes it, on the N training features F (one augmented view per shot):

- ``W₀ = Σ_{i∈c} f_i``: the class SUM, not the mean (methods/utils.py:L121-123 has the division commented out);
  ``b₀ ~ U(−1/√E, 1/√E)``, nn.Linear's default, and trained (L96-97);
- ``α₀ = 250 · mean_c mean_{i∈c} f_i·t_c``, the same for every class (L24-30, L105-107);
- ``lr_W = 4N / λ_max(FᵀF)`` (L32-39), ``lr_α = N / (4 · max_c Σ_i (f_i·t_c)²)`` (L16-22);
- 300 full-batch iterations of SGD with momentum 0.9 on (W, b) at lr_W (L116-135); every 10 iterations
  ``α −= lr_α · Σ_{j≤it} ∂L_j/∂α``: the reference never zeroes α's gradient, so each step uses the SUM of every
  gradient since the start (L137-139). Both quirks are kept: they produced the published numbers.
- the kept state is that of the iteration with the best accuracy on a K-shot validation split (``>=``: ties go to
  the later one, L141-155): ``hparams: val`` here, on ``context.validation()``; ``fixed`` keeps the last.
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from ..learners.base import LEARNERS
from ..learners.features import FeatureMethod, imagenet_ensemble
from ..options.methods import LPPlusPlusConfig

log = logging.getLogger("promptclip")


def step_sizes(features: torch.Tensor, text_logits: torch.Tensor) -> Tuple[float, float]:
    """``(lr_W, lr_α) = (4N / λ_max(FᵀF), N / (4 · max_c Σ_i (f_i·t_c)²))`` for features ``[N,E]`` and their
    zero-shot cosines ``f·Tᵀ [N,C]``."""
    n = features.shape[0]
    features = features.double()
    lr_w = 4 * n / torch.linalg.eigvalsh(features.t() @ features).max().item()
    lr_alpha = n / (4 * text_logits.double().pow(2).sum(0).max().item())
    return lr_w, lr_alpha


def blend(features: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor,
          text_logits: torch.Tensor) -> torch.Tensor:
    """``f·Wᵀ + b + α ⊙ (f·Tᵀ)`` with the zero-shot cosines ``f·Tᵀ`` given."""
    return features @ weight.t() + bias + alpha * text_logits


@LEARNERS.register("lp_plus_plus")
class LPPlusPlus(FeatureMethod):
    """Linear probe ``W, b`` plus ``α ⊙`` zero-shot cosines, solved in :meth:`prepare`; saved as buffers."""

    Config = LPPlusPlusConfig
    searches = True

    def __init__(self, cfg, backbone, classnames, template="a photo of a {}.", dataset=""):
        super().__init__(cfg, backbone, classnames, template, dataset)
        classes, dim = len(classnames), backbone.embed_dim
        self.register_buffer("weight", torch.zeros(classes, dim))
        self.register_buffer("bias", torch.zeros(classes))
        self.register_buffer("alpha", torch.zeros(classes))
        self.chosen: Dict[str, float] = {}

    def dataset_templates(self, dataset: str, template: str) -> List[str]:
        return imagenet_ensemble(dataset, template)

    def prepare(self, context) -> None:
        super().prepare(context)
        views, labels = context.train_views(self.cfg.views)
        features = views.flatten(0, 1).float().to(self.zeroshot.device)
        labels = labels.repeat(self.cfg.views).to(features.device)
        validation = None
        if self.cfg.hparams == "val":
            validation = context.validation()
            if validation is None:
                log.info("%s: no validation split of its own; keeping the last of %d iterations (hparams: fixed).",
                         self.cfg.name, self.cfg.iterations)
        self.solve(features, labels, validation)

    def solve(self, features: torch.Tensor, labels: torch.Tensor,
              validation: Optional[Tuple[torch.Tensor, torch.Tensor]] = None) -> None:
        """Run the reference's solver on ``features [N,E]``; with ``validation`` keep its best iteration. The
        cross-entropy's gradient is written out (``(softmax − onehot)/N``): the same steps as autograd, faster."""
        classes, dim = self.zeroshot.shape
        text = features @ self.zeroshot.t()
        counts = torch.bincount(labels, minlength=classes).float()
        own_class = text.gather(1, labels[:, None])[:, 0]  # f_i·t_{y_i}
        own = torch.zeros(classes, device=features.device).index_add_(0, labels, own_class)
        present = counts > 0  # a class short of shots has no mean
        lr_w, lr_alpha = step_sizes(features, text)
        weight = torch.zeros(classes, dim, device=features.device).index_add_(0, labels, features)
        bias = torch.empty(classes, device=features.device).uniform_(-dim ** -0.5, dim ** -0.5)
        alpha = torch.full((classes,), 250 * (own[present] / counts[present]).mean().item(), device=features.device)
        if validation is not None:
            val_features = validation[0].float().to(features.device)
            val_labels = validation[1].to(features.device)
            val_text = val_features @ self.zeroshot.t()
        momentum_w, momentum_b = torch.zeros_like(weight), torch.zeros_like(bias)
        alpha_gradient = torch.zeros_like(alpha)  # summed over every iteration, never reset (the reference's)
        best, kept = -1.0, None
        targets = F.one_hot(labels, classes).float()
        for iteration in range(1, self.cfg.iterations + 1):
            # the gradient of the mean cross-entropy with respect to the logits, then to W, b and α
            residual = (blend(features, weight, bias, alpha, text).softmax(-1) - targets) / len(labels)
            grad_w, grad_b, grad_alpha = residual.t() @ features, residual.sum(0), (residual * text).sum(0)
            momentum_w = self.cfg.momentum * momentum_w + grad_w  # torch SGD's buffer (the first step: the gradient)
            momentum_b = self.cfg.momentum * momentum_b + grad_b
            weight, bias = weight - lr_w * momentum_w, bias - lr_w * momentum_b
            alpha_gradient = alpha_gradient + grad_alpha
            if iteration % self.cfg.alpha_every == 0:
                alpha = alpha - lr_alpha * alpha_gradient
            if validation is not None:
                predictions = blend(val_features, weight, bias, alpha, val_text).argmax(-1)
                accuracy = (predictions == val_labels).float().mean().item()
                if accuracy >= best:
                    best, kept = accuracy, (weight, bias, alpha, iteration)
        if kept is None:
            kept = (weight, bias, alpha, self.cfg.iterations)
        self.weight, self.bias, self.alpha = (t.detach().clone() for t in kept[:3])
        self.chosen = {"iteration": float(kept[3]), "lr_w": lr_w, "lr_alpha": lr_alpha}

    def hyperparameters(self) -> Dict[str, float]:
        return dict(self.chosen)

    def head(self, image_features, class_features, logit_scale):
        return blend(image_features, self.weight, self.bias, self.alpha, image_features @ class_features.t())
