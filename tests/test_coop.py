"""CoOp's prompt assembly, initialisation, gradients and class-set transfer; zero-shot templates."""
import pytest
import torch

from promptclip.errors import ConfigError
from promptclip.learners import LEARNERS
from promptclip.learners.coop import CoOpConfig
from promptclip.learners.zeroshot import ZeroShotConfig
from promptclip.model import PromptedCLIP

X = 343  # "X" in CLIP's vocabulary


def token_ids(tiny, text):
    return tiny.tokenizer.encode(text)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_assembly_places_context_and_class_tokens(tiny, position):
    names = ["dog", "sea lion"]
    coop = LEARNERS.get("coop")(CoOpConfig(n_ctx=4, position=position), tiny, names)
    x_embedding = tiny.embed_tokens(torch.tensor([[X]]))[0, 0]
    with torch.no_grad():
        coop.ctx.copy_(x_embedding.expand(4, -1))
    assembled = coop.prompts.assemble(coop.ctx)
    sos, eot, dot = 49406, 49407, token_ids(tiny, ".")[0]
    for c, name in enumerate(names):
        cls = token_ids(tiny, name)
        ctx = [X] * 4
        order = {"end": ctx + cls, "middle": ctx[:2] + cls + ctx[2:], "front": cls + ctx}[position]
        expected = [sos, *order, dot, eot]
        want = tiny.embed_tokens(torch.tensor([expected]))[0]
        torch.testing.assert_close(assembled[c, :len(expected)], want)
        assert int(coop.prompts.eot[c]) == len(expected) - 1


def test_context_can_be_told_apart_in_middle_position(tiny):
    coop = LEARNERS.get("coop")(CoOpConfig(n_ctx=4, position="middle"), tiny, ["sea lion"])
    with torch.no_grad():
        coop.ctx.copy_(torch.arange(4.0).unsqueeze(1).expand(4, tiny.text_width))
    row = coop.prompts.assemble(coop.ctx)[0].detach()
    assert [float(row[p, 0]) for p in (1, 2, 5, 6)] == [0.0, 1.0, 2.0, 3.0]  # ctx[:2], "sea lion", ctx[2:]


def test_word_initialisation(tiny):
    coop = LEARNERS.get("coop")(CoOpConfig(init="a photo of a"), tiny, ["dog"])
    ids = tiny.tokenize(["a photo of a"])
    assert coop.n_ctx == 4
    torch.testing.assert_close(coop.ctx.detach(), tiny.embed_tokens(ids)[0, 1:5])


def test_class_specific_shapes_and_no_transfer(tiny):
    coop = LEARNERS.get("coop")(CoOpConfig(n_ctx=2, class_specific=True), tiny, ["a", "b", "c"])
    assert coop.ctx.shape == (3, 2, tiny.text_width)
    assert coop.text_features(tiny).shape == (3, tiny.embed_dim)
    with pytest.raises(ConfigError, match="class_specific=false"):
        coop.set_classnames(tiny, ["d", "e"])
    with pytest.raises(ConfigError, match="random"):
        LEARNERS.get("coop")(CoOpConfig(init="a photo of a", class_specific=True), tiny, ["a"])


def test_gradients_reach_the_context_only(tiny):
    coop = LEARNERS.get("coop")(CoOpConfig(n_ctx=4), tiny, ["cat", "dog", "bird"])
    model = PromptedCLIP(tiny, coop)
    out = model(torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0]))
    out.loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["text.ctx"]
    assert coop.ctx.grad is not None and coop.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())


def test_shared_context_transfers_to_new_classes(tiny):
    coop = LEARNERS.get("coop")(CoOpConfig(n_ctx=4), tiny, ["cat", "dog"])
    coop.set_classnames(tiny, ["bird", "fish", "horse"])
    assert coop.text_features(tiny).shape == (3, tiny.embed_dim)


def test_zero_shot_ensemble_is_mean_of_normalised_template_features(tiny):
    names = ["golden_retriever", "cat"]
    zs = LEARNERS.get("zeroshot")(ZeroShotConfig(templates=["a photo of a {}.", "art of the {}."]), tiny, names)
    feats = zs.text_features(tiny)
    per = [torch.nn.functional.normalize(tiny.encode_text_ids(tiny.tokenize([t.format(n.replace("_", " "))
                                                                             for n in names])), dim=-1)
           for t in ["a photo of a {}.", "art of the {}."]]
    expected = torch.nn.functional.normalize(per[0] + per[1], dim=-1)
    torch.testing.assert_close(feats, expected, atol=1e-6, rtol=1e-5)
    with pytest.raises(ConfigError, match="exactly one"):
        LEARNERS.get("zeroshot")(ZeroShotConfig(templates=["no slot"]), tiny, names).text_features(tiny)
