"""Invariants of the published-numbers table: it is typed in by hand, so arithmetic checks catch a mistyped digit."""
from collections import Counter

import pytest

from promptclip.bench.published import AVERAGE, ELEVEN, METHODS, NUMBERS, SHIFTS, lookup
from promptclip.config import load_yaml

#: the methods whose per-dataset base-to-new rows were confirmed against the PromptKD (and ATPrompt) table images
CONFIRMED_B2N = ["CoCoOp", "CoOp", "MaPLe", "PromptSRC", "zero-shot CLIP"]

#: a value rounded to 2 decimals is off by ≤ 0.005; a quantity derived from two rounded values by ≤ 0.01
ROUNDING = 0.01

VALUES = {(n.protocol, n.method, n.dataset, n.metric, n.backbone): n.value for n in NUMBERS}


def _harmonic(base: float, new: float) -> float:
    return 2 * base * new / (base + new)


def test_every_h_is_the_harmonic_mean_of_its_base_and_new():
    rows = [key for key in VALUES if key[3] == "H"]
    assert len(rows) == 8 + 6 * len(ELEVEN)  # 8 averages, 6 methods per dataset
    for protocol, method, dataset, _, backbone in rows:
        base, new = (VALUES[(protocol, method, dataset, m, backbone)] for m in ("base", "new"))
        h = VALUES[(protocol, method, dataset, "H", backbone)]
        assert h == pytest.approx(_harmonic(base, new), abs=ROUNDING), (method, dataset)


@pytest.mark.parametrize("metric", ["base", "new"])
def test_base_to_new_averages_are_the_mean_of_the_eleven_datasets(metric):
    """Only for methods with all eleven rows (the papers average B and N over datasets, then take H)."""
    checked = []
    for (protocol, method, dataset, m, backbone), average in VALUES.items():
        rows = [VALUES.get((protocol, method, d, m, backbone)) for d in ELEVEN]
        if protocol == "base_to_new" and dataset == AVERAGE and m == metric and None not in rows:
            assert average == pytest.approx(sum(rows) / len(rows), abs=ROUNDING), method
            checked.append(method)
    assert sorted(checked) == sorted(["zero-shot CLIP", "CoOp", "CoCoOp", "MaPLe", "KgCoOp", "PromptSRC"])


def test_cross_dataset_averages_are_the_mean_of_the_ten_targets():
    checked = []
    for (protocol, method, dataset, _, backbone), average in VALUES.items():
        rows = [VALUES.get((protocol, method, d, "accuracy", backbone)) for d in ELEVEN[1:]]
        if protocol == "cross_dataset" and dataset == AVERAGE and None not in rows:
            assert average == pytest.approx(sum(rows) / len(rows), abs=ROUNDING), method
            checked.append(method)
    assert sorted(checked) == ["CoCoOp", "CoOp", "PromptSRC"]


def test_rows_are_unique_and_name_known_methods_and_datasets():
    """A duplicate would be shadowed by ``lookup``, which returns the first match."""
    keys = Counter((n.protocol, n.method, n.dataset, n.metric, n.backbone) for n in NUMBERS)
    assert [key for key, count in keys.items() if count > 1] == []
    assert {n.method for n in NUMBERS} <= set(METHODS)
    datasets = {"base_to_new": {AVERAGE, *ELEVEN}, "cross_dataset": {AVERAGE, *ELEVEN},
                "domain_generalization": {"ImageNet", *SHIFTS}, "few_shot": {AVERAGE, *ELEVEN}}
    for n in NUMBERS:
        assert n.dataset in datasets[n.protocol], n
        assert 0 < n.value < 100, n


def test_every_method_maps_to_presets_that_reproduce_it():
    for paper, presets in METHODS.items():
        for name in presets:
            assert load_yaml(name).get("method") == name, (paper, name)


def test_lookup_finds_the_new_methods_with_their_status():
    kgcoop = lookup("base_to_new", "kgcoop", AVERAGE, "H", "ViT-B-16", "openai")
    assert (kgcoop.value, kgcoop.status) == (77.00, "published")
    dtd = lookup("base_to_new", "promptsrc", "DescribableTextures", "new", "ViT-B-16-quickgelu", "openai")
    assert (dtd.value, dtd.status) == (62.97, "published")
    kgcoop_dtd = lookup("base_to_new", "kgcoop", "DescribableTextures", "new", "ViT-B-16", "openai")
    assert (kgcoop_dtd.value, kgcoop_dtd.status, kgcoop_dtd.source) == (54.99, "published (as recalled)", "")
    assert lookup("base_to_new", "promptsrc", AVERAGE, "H", "ViT-B-16", "laion2b_s34b_b88k") is None
    few_shot = lookup("few_shot", "promptsrc", AVERAGE, "accuracy", "ViT-B-16", "openai", shots=16)
    assert (few_shot.value, few_shot.status) == (82.87, "published (as recalled)")
    assert lookup("few_shot", "promptsrc", AVERAGE, "accuracy", "ViT-B-16", "openai", shots=4) is None
    assert lookup("cross_dataset", "kgcoop", AVERAGE, "accuracy", "ViT-B-16", "openai") is None


def _b2n(method: str, dataset: str):
    return [n for n in NUMBERS if (n.protocol, n.method, n.dataset) == ("base_to_new", method, dataset)]


def test_every_base_to_new_method_has_the_eleven_datasets_and_the_average():
    methods = {n.method for n in NUMBERS if n.protocol == "base_to_new" and n.dataset != AVERAGE}
    assert sorted(methods) == sorted(CONFIRMED_B2N + ["KgCoOp"])
    for method in methods:
        for dataset in (*ELEVEN, AVERAGE):
            assert sorted(n.metric for n in _b2n(method, dataset)) == ["H", "base", "new"], (method, dataset)


def test_confirmed_base_to_new_rows_name_their_source_and_recalled_ones_none():
    """Each confirmed row says which table it was read from; the two table images hold the five methods' rows."""
    rows = [n for n in NUMBERS if n.protocol == "base_to_new"]
    for n in rows:
        assert bool(n.source) == n.confirmed, n
    for method in CONFIRMED_B2N:
        for dataset in (*ELEVEN, AVERAGE):
            for n in _b2n(method, dataset):
                assert n.confirmed and "zhengli97/PromptKD" in n.source and "images/exp_results.png" in n.source, n
                assert ("zhengli97/ATPrompt" in n.source) == (method != "zero-shot CLIP"), n
    assert {n.confirmed for n in rows if n.method == "KgCoOp" and n.dataset != AVERAGE} == {False}


@pytest.mark.parametrize("method", CONFIRMED_B2N)
def test_lookup_returns_each_confirmed_row_as_published(method):
    """Through every preset of the paper's method, on the published backbone, with the quickgelu name as well."""
    for preset in METHODS[method]:
        for dataset in ELEVEN:
            for metric in ("base", "new", "H"):
                number = lookup("base_to_new", preset, dataset, metric, "ViT-B-16-quickgelu", "openai")
                assert number.status == "published" and number.value == VALUES[
                    ("base_to_new", method, dataset, metric, "ViT-B-16")], (preset, dataset, metric)


def test_spot_values_read_from_the_tables():
    """A few cells checked by eye against PromptKD images/exp_results.png, so a shifted row cannot pass."""
    cells = {("zero-shot CLIP", "FGVCAircraft"): (27.19, 36.29, 31.09), ("CoOp", "EuroSAT"): (92.19, 54.74, 68.69),
             ("CoCoOp", "StanfordCars"): (70.49, 73.59, 72.01), ("MaPLe", "UCF101"): (83.00, 78.66, 80.77),
             ("PromptSRC", "OxfordFlowers"): (98.07, 76.50, 85.95)}
    for (method, dataset), expected in cells.items():
        got = tuple(VALUES[("base_to_new", method, dataset, m, "ViT-B-16")] for m in ("base", "new", "H"))
        assert got == expected, (method, dataset)


def test_few_shot_rows_of_the_methods_on_features_average_their_eleven_datasets_per_backbone():
    rows = {(n.method, n.backbone) for n in NUMBERS if n.protocol == "few_shot" and n.dataset != AVERAGE}
    assert rows == {("CLIP-Adapter", "RN50"), ("Tip-Adapter", "RN50"), ("Tip-Adapter-F", "RN50"), ("GDA", "RN50"),
                    ("GDA", "ViT-B-16")}
    for method, backbone in rows:
        values = [VALUES[("few_shot", method, d, "accuracy", backbone)] for d in ELEVEN]
        average = VALUES[("few_shot", method, AVERAGE, "accuracy", backbone)]
        assert average == pytest.approx(sum(values) / 11, abs=ROUNDING), (method, backbone)


def test_lookup_picks_the_number_of_the_runs_backbone():
    assert lookup("few_shot", "gda", AVERAGE, "accuracy", "RN50", "openai", 16).value == 76.05
    assert lookup("few_shot", "gda", AVERAGE, "accuracy", "ViT-B-16", "openai", 16).value == 81.85
    assert lookup("few_shot", "gda", "ImageNet", "accuracy", "ViT-B-16", "openai", 16).value == 72.24
    assert lookup("few_shot", "tip_adapter", AVERAGE, "accuracy", "ViT-B-16", "openai", 16) is None  # RN50 only
    assert lookup("few_shot", "tip_adapter_f", AVERAGE, "accuracy", "RN50", "openai", 8) is None  # 16 shots only
