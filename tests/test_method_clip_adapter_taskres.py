"""CLIP-Adapter and TaskRes: logits against hand-written formulas, TaskRes's raw-mean base and α table, the presets'
recipes, and end-to-end runs on a coloured image folder (train, evaluate, save, load, predict)."""
import pytest
import torch
import torch.nn.functional as F

from bench_fixtures import coloured_folder
from method_checks import check_loads_and_predicts
from promptclip.config import build_config
from promptclip.engine import runner
from promptclip.errors import ConfigError
from promptclip.data.benchmarks import BENCHMARKS
from promptclip.hooks import PrepareContext
from promptclip.methods.clip_adapter import CLIPAdapter, CLIPAdapterConfig
from promptclip.methods.taskres import TaskRes, TaskResConfig
from promptclip.model import ModelParts, create_model

CPU = torch.device("cpu")
CLASSES = ["cat", "golden_retriever", "space shuttle"]
#: CoOp's IMAGENET_TEMPLATES_SELECT, written out here so the test does not read the module's list
SELECT = ["itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
          "a {} in a video game.", "art of the {}.", "a photo of the small {}."]


def unit(*shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=-1)


def context(backbone, dataset):
    """A context as the engine gives it: the benchmark's own template (CoOp's per-dataset one)."""
    return PrepareContext(backbone, CLASSES, BENCHMARKS[dataset].template, dataset, CPU, 1, lambda: None)


def raw_text(backbone, template):
    """Raw (un-normalised) text features ``[C, E]`` of ``template`` filled with CLASSES, underscores as spaces."""
    prompts = [template.format(c.replace("_", " ")) for c in CLASSES]
    with torch.no_grad():
        return backbone.encode_text_ids(backbone.tokenize(prompts)).double()


# ------------------------------------------------------------------------------------------------ CLIP-Adapter
@pytest.mark.parametrize("ratio", [0.2, 0.6])
def test_clip_adapter_logits_match_a_hand_written_mlp(tiny, ratio):
    learner = CLIPAdapter(CLIPAdapterConfig(ratio=ratio), tiny, CLASSES)
    e = tiny.embed_dim
    first, second = learner.adapter[0].weight, learner.adapter[2].weight
    assert first.shape == (e // 4, e) and second.shape == (e, e // 4)  # the width follows embed_dim
    assert learner.adapter[0].bias is None and learner.adapter[2].bias is None
    learner.zeroshot = unit(3, e, seed=1).float()
    images, scale = unit(5, e, seed=2), torch.tensor(37.0)
    with torch.no_grad():
        got = learner.head(images.float(), F.normalize(learner.text_features(tiny), dim=-1), scale)
        w1, w2 = first.double(), second.double()
    adapted = torch.clamp(torch.clamp(images @ w1.t(), min=0) @ w2.t(), min=0)
    blended = ratio * adapted + (1 - ratio) * images
    blended = blended / blended.norm(dim=-1, keepdim=True)
    expected = 37.0 * blended @ learner.zeroshot.double().t()
    assert torch.allclose(got.double(), expected, atol=1e-4)
    with torch.no_grad():  # the reference adapts the raw encoder output: any positive scale gives the same logits
        raw = learner.head(4.3 * images.float(), F.normalize(learner.text_features(tiny), dim=-1), scale)
    assert torch.allclose(raw.double(), expected, atol=1e-4)


def test_clip_adapter_uses_the_dataset_template_and_refuses_an_empty_bottleneck(tiny):
    learner = CLIPAdapter(CLIPAdapterConfig(), tiny, CLASSES, dataset="DescribableTextures")
    learner.prepare(context(tiny, "DescribableTextures"))
    assert torch.allclose(learner.zeroshot.double(), F.normalize(raw_text(tiny, "{} texture."), dim=-1), atol=1e-5)
    with pytest.raises(ConfigError, match="reduction"):
        CLIPAdapter(CLIPAdapterConfig(reduction=tiny.embed_dim + 1), tiny, CLASSES)


# ----------------------------------------------------------------------------------------------------- TaskRes
def test_taskres_base_is_the_raw_mean_of_the_reference_templates(tiny):
    imagenet = TaskRes(TaskResConfig(), tiny, CLASSES, dataset="ImageNet")
    imagenet.prepare(context(tiny, "ImageNet"))
    expected = torch.stack([raw_text(tiny, t) for t in SELECT + ["a photo of a {}."]]).mean(0)
    assert torch.allclose(imagenet.base.double(), expected, atol=1e-5)
    assert not torch.allclose(imagenet.base.norm(dim=-1), torch.ones(3), atol=1e-2)  # kept un-normalised
    ensemble = F.normalize(torch.stack([F.normalize(raw_text(tiny, t), dim=-1) for t in SELECT + ["a photo of a {}."]])
                           .mean(0), dim=-1)  # CLIP's convention, which TaskRes does not use
    assert not torch.allclose(F.normalize(imagenet.base.double(), dim=-1), ensemble, atol=1e-3)
    pets = TaskRes(TaskResConfig(), tiny, CLASSES, dataset="OxfordPets")
    pets.prepare(context(tiny, "OxfordPets"))
    assert torch.allclose(pets.base.double(), raw_text(tiny, "a photo of a {}, a type of pet."), atol=1e-5)


def test_taskres_logits_are_the_scaled_cosine_with_the_renormalised_sum(tiny):
    model = create_model(ModelParts(TaskResConfig(alpha=0.7), CLASSES, "a photo of a {}.", "ImageNet"), tiny,
                         context(tiny, "ImageNet"))
    learner = model.text
    images = unit(4, tiny.embed_dim, seed=3)
    base = torch.stack([raw_text(tiny, t) for t in SELECT + ["a photo of a {}."]]).mean(0)
    with torch.no_grad():  # at X = 0: zero-shot CLIP on the raw-mean classifier
        initial = model.head(images.float()).logits
    zero_shot = tiny.logit_scale.double() * images @ (base / base.norm(dim=-1, keepdim=True)).t()
    assert torch.allclose(initial.double(), zero_shot, atol=1e-3)
    residual = unit(3, tiny.embed_dim, seed=4) * 3.0
    with torch.no_grad():
        learner.residual.copy_(residual.float())
        got = model.head(images.float()).logits
    weights = base + 0.7 * residual
    expected = tiny.logit_scale.double() * images @ (weights / weights.norm(dim=-1, keepdim=True)).t()
    assert torch.allclose(got.double(), expected, atol=1e-3)
    assert not torch.allclose(got, initial, atol=1e-1)


def test_taskres_alpha_is_the_reference_table_unless_given(tiny):
    assert float(TaskRes(TaskResConfig(), tiny, CLASSES, dataset="OxfordFlowers").alpha) == 1.0
    assert float(TaskRes(TaskResConfig(), tiny, CLASSES, dataset="Caltech101").alpha) == 0.5
    assert float(TaskRes(TaskResConfig(alpha=0.25), tiny, CLASSES, dataset="OxfordFlowers").alpha) == 0.25
    assert torch.count_nonzero(TaskRes(TaskResConfig(), tiny, CLASSES).residual) == 0  # zero init


@pytest.mark.parametrize("learner, options", [(CLIPAdapter, {"ratio": 0.3}), (TaskRes, {"alpha": 0.5})])
def test_hparams_val_searches_nothing(tiny, learner, options):
    def no_validation():
        raise AssertionError("the reference has no validation step: nothing may read the validation split")

    prepared = {}
    for hparams in ("fixed", "val"):
        method = learner(learner.Config(hparams=hparams, **options), tiny, CLASSES, dataset="EuroSAT")
        searching = PrepareContext(tiny, CLASSES, "a photo of a {}.", "EuroSAT", CPU, 1, lambda: None,
                                   val_features=no_validation)
        method.prepare(searching)
        method.after_training(searching)
        assert method.hyperparameters() == {}
        prepared[hparams] = method.state_dict()
    assert prepared["val"].keys() == prepared["fixed"].keys()
    assert all(torch.equal(prepared["val"][k], prepared["fixed"][k]) for k in prepared["val"] if "adapter" not in k)


def test_presets_carry_the_reference_recipes():
    adapter, taskres = build_config(["clip_adapter"]), build_config(["taskres"])
    assert (adapter.text.ratio, adapter.text.reduction, adapter.optim.name, adapter.optim.lr, adapter.optim.momentum,
            adapter.optim.weight_decay, adapter.train.batch_size, adapter.train.epochs) == \
        (0.2, 4, "sgd", 0.002, 0.9, 0.0005, 32, 200)
    assert (taskres.text.alpha, taskres.optim.name, taskres.optim.lr, taskres.optim.weight_decay,
            taskres.train.batch_size, taskres.train.epochs) == (None, "adamw", 0.002, 0.0005, 256, 100)
    for cfg in (adapter, taskres):
        assert (cfg.optim.scheduler, cfg.optim.warmup_epochs, cfg.optim.warmup_lr) == ("cosine", 1, 1e-5)


# ------------------------------------------------------------------------------------------------- end to end
@pytest.mark.parametrize("preset, learned", [("clip_adapter", {"adapter.0.weight", "adapter.2.weight"}),
                                             ("taskres", {"residual"})])
def test_a_run_trains_only_its_parameters_and_loads_back(tmp_path, monkeypatch, preset, learned):
    root = coloured_folder(tmp_path / "data")
    cfg = build_config([preset], ["data.name=imagefolder", f"data.root={root}", "model.name=tiny-vit",
                                  "model.pretrained=null", "train.device=cpu", "data.shots=2", "train.epochs=3",
                                  "train.batch_size=4", "optim.lr=0.01", "optim.warmup_epochs=0",
                                  f"output.root={tmp_path}/runs", f"output.cache_dir={tmp_path}/cache"])
    built = []

    def keep(*args, **kwargs):
        model = build_model(*args, **kwargs)
        built.append((model, {k: v.detach().clone() for k, v in model.text.named_parameters()}))
        return model

    build_model = runner.build_model
    monkeypatch.setattr(runner, "build_model", keep)
    result = runner.run(cfg, progress=False)
    (model, initial), = built
    assert {n for n, p in model.text.named_parameters() if p.requires_grad} == learned
    assert {id(p) for p in model.trainable_parameters()} == {id(p) for p in model.text.parameters()}
    assert result["num_parameters"] == sum(p.numel() for p in model.text.parameters())
    assert all(not torch.equal(p, initial[n]) for n, p in model.text.named_parameters())  # trained

    check_loads_and_predicts(model, cfg, root, result)
