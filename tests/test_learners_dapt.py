"""DAPT's dispersion losses against direct formulas, its prototypes and their cache, and a DAPT training run."""
import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from promptclip.errors import ConfigError
from promptclip.learners.coop import CoOp, CoOpConfig
from promptclip.learners.vpt import VPT, VPTConfig
from promptclip.hooks import ModelOutput, PrepareContext
from promptclip.methods.dapt import InterDispersion, IntraDispersion
from promptclip.options.methods import InterDispersionConfig, IntraDispersionConfig
from promptclip.registry import LOSSES
from promptclip.model import PromptedCLIP


@pytest.fixture
def backbone(tiny):
    return tiny


def output(text=None, image=None):
    empty = torch.zeros(1, 1)
    return ModelOutput(logits=empty, image_features=image if image is not None else empty,
                       text_features=text if text is not None else empty)


def direct_inter(w, t):
    """mean over pairs m<n of exp(-t ||w_m - w_n||^2), written out pair by pair."""
    values = [math.exp(-t * sum((a - b) ** 2 for a, b in zip(w[m], w[n])))
              for m, n in itertools.combinations(range(len(w)), 2)]
    return sum(values) / len(values)


def test_registered():
    assert {"dapt_inter", "dapt_intra"} <= set(LOSSES.names())


def test_inter_dispersion_against_formula():
    w = F.normalize(torch.tensor([[1.0, 0.0, 0.0], [0.6, 0.8, 0.0], [0.0, 0.0, 1.0], [-1.0, 0.2, 0.1]]), dim=-1)
    expected = direct_inter(w.tolist(), 2.0)
    reference = InterDispersion(InterDispersionConfig())(output(text=w), None)
    assert reference.item() == pytest.approx(expected, rel=1e-5)
    # the same as the reference code's torch.pdist form
    assert reference.item() == pytest.approx(torch.pdist(w).pow(2).mul(-2.0).exp().mean().item(), rel=1e-5)
    log_form = InterDispersion(InterDispersionConfig(form="log", t=3.0))(output(text=w), None)
    assert log_form.item() == pytest.approx(math.log(direct_inter(w.tolist(), 3.0)), rel=1e-5)


def test_inter_dispersion_per_image_for_conditioned_features():
    w = F.normalize(torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0)), dim=-1)
    value = InterDispersion(InterDispersionConfig())(output(text=w), None)
    assert value.item() == pytest.approx(sum(direct_inter(x.tolist(), 2.0) for x in w) / 3, rel=1e-5)


def test_inter_dispersion_errors():
    with pytest.raises(ConfigError, match="form"):
        InterDispersion(InterDispersionConfig(form="exp"))
    with pytest.raises(ConfigError, match="two classes"):
        InterDispersion(InterDispersionConfig())(output(text=torch.ones(1, 3)), None)


def test_intra_dispersion_against_formula():
    loss = IntraDispersion(IntraDispersionConfig())
    with pytest.raises(ConfigError, match="prepare"):
        loss(output(image=torch.zeros(2, 3)), torch.tensor([0, 1]))
    loss.prototypes = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]])
    z = torch.tensor([[0.0, 1.0, 0.0], [0.6, 0.0, 0.8], [1.0, 0.0, 0.0]])
    labels = torch.tensor([1, 0, 0])
    expected = sum((a - b) ** 2 for i, y in enumerate(labels.tolist())
                   for a, b in zip(z[i].tolist(), loss.prototypes[y].tolist())) / 9
    assert loss(output(image=z), labels).item() == pytest.approx(expected, rel=1e-6)
    assert "prototypes" not in loss.state_dict()  # derived from data, rebuilt by prepare


def make_context(backbone, features, labels):
    """A PrepareContext whose training split has the given frozen features; counts how often they are asked for."""
    calls = []

    def train_features():
        calls.append(1)
        return features, labels

    context = PrepareContext(backbone=backbone, classnames=["cat", "dog", "car"], template="a photo of a {}.",
                             dataset="", device=torch.device("cpu"), epochs=1, train_features=train_features)
    return context, calls


def test_prototypes_are_class_means_of_the_frozen_features(backbone):
    g = torch.Generator().manual_seed(0)
    images, labels = torch.randn(6, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0, 1, 0])
    with torch.no_grad():
        z = F.normalize(backbone.encode_image(images), dim=-1)
    loss = IntraDispersion(IntraDispersionConfig())
    context, calls = make_context(backbone, z, labels)
    loss.prepare(context)
    expected = torch.stack([z[labels == c].mean(0) for c in range(3)])
    assert torch.allclose(loss.prototypes, expected, atol=1e-6)
    assert loss.prototypes[0].norm() < 0.999  # a mean of unit vectors, not renormalised
    assert len(calls) == 1
    by_hand, _ = make_context(backbone, torch.tensor([[3.0, 4.0], [0.0, 2.0], [1.0, 0.0], [0.0, -5.0]]),
                              torch.tensor([0, 0, 1, 2]))
    loss.prepare(by_hand)  # features are normalised before the means
    assert torch.allclose(loss.prototypes, torch.tensor([[0.3, 0.9], [1.0, 0.0], [0.0, -1.0]]))


def test_dapt_trains_coop_and_vpt_with_both_losses(backbone):
    torch.manual_seed(0)
    classes = ["cat", "dog", "car"]
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 0, 1, 2])
    losses = {"dapt_inter": InterDispersion(InterDispersionConfig(weight=0.5)),
              "dapt_intra": IntraDispersion(IntraDispersionConfig(weight=5.0))}
    with torch.no_grad():
        losses["dapt_intra"].prepare(make_context(backbone, F.normalize(backbone.encode_image(x), dim=-1), y)[0])
    model = PromptedCLIP(backbone, CoOp(CoOpConfig(n_ctx=4), backbone, classes),
                         VPT(VPTConfig(n_tokens=4), backbone, classes), losses)
    weights = {"ce": 1.0, "dapt_inter": 0.5, "dapt_intra": 5.0}

    def total():
        with torch.no_grad():
            terms = model(x, y).terms
        assert set(terms) == set(weights)
        return sum(w * terms[k] for k, w in weights.items())

    before = total()
    optimizer = torch.optim.Adam(model.trainable_parameters(), lr=3e-4)
    for _ in range(5):
        out = model(x, y)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    assert torch.isclose(out.loss, sum(w * out.terms[k] for k, w in weights.items()))
    assert model.text.ctx.grad.abs().sum() > 0 and model.vision.prompts.tokens.grad.abs().sum() > 0
    assert total() < 0.98 * before
