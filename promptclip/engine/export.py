"""``promptclip export RUN DIR``: a finished run as a self-contained, shareable folder in PEFT's layout.

``adapter_config.json`` (PEFT's keys where they make sense, then promptclip's own: everything ``prompts.json``
holds, the run's result and training settings), ``adapter_model.safetensors`` (the run's ``prompts.safetensors``,
byte for byte) and a ``README.md`` model card. :func:`promptclip.load_run` and ``promptclip predict`` read the
folder as they read the run. The backbone must be one a reader can get by its name (an open_clip tag, an
``hf-hub:`` id, a built-in random config); a local checkpoint is refused unless ``allow_local_weights``, which
records the file's name and sha256, checked when the folder is loaded with that file placed in it."""
from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path
from typing import Dict, List, Optional, Union

from .. import run_files, runs
from ..errors import PromptclipError
from ..runs import ADAPTER_CONFIG, ADAPTER_FORMAT, ADAPTER_MODEL, PEFT_TYPE
from ..utils import atomic_write_bytes, atomic_write_json, atomic_write_text, versions

log = logging.getLogger(__name__)
MODEL_CARD = "README.md"
#: identity settings a model card and adapter_config.json show of the training (paths to local data are left out)
TRAINING_SETTINGS = ("seed", "optim", "train", "data.shots", "data.subsample", "data.augment")
_SHA256 = re.compile(r"\(sha256 ([0-9a-f]{64})\)$")


def _local_weights(meta: dict) -> Optional[str]:
    """The local checkpoint file or ``local-dir:`` folder the run's backbone was loaded from, or None when its
    weights have a name a reader can get (an open_clip tag, an ``hf-hub:`` id, none: seeded random weights)."""
    import open_clip

    name, pretrained = meta["backbone"]["model"], meta["backbone"]["pretrained"]
    if name.startswith("local-dir:"):
        return name[len("local-dir:"):]
    if pretrained is not None and pretrained not in open_clip.list_pretrained_tags_by_model(name):
        return pretrained
    return None


def _recorded_sha256(stored: runs.Identity) -> Optional[str]:
    """The sha256 of the local checkpoint the run's identity recorded when training started (None if none)."""
    match = _SHA256.search(str(stored.settings.get("model.pretrained", "")))
    return match.group(1) if match else None


def _weights(meta: dict, stored: runs.Identity, run_dir: Path, allow_local_weights: bool) -> Dict[str, object]:
    """What the export records of a local checkpoint (its file name and sha256), or {} for named weights."""
    from .prompts import local_weights_sha256

    local = _local_weights(meta)
    if local is None:
        return {}
    name = meta["backbone"]["model"]
    if name.startswith("local-dir:"):
        raise PromptclipError(
            f"{run_dir} was trained on the model folder {local} (model.name={name}): an export names its backbone so "
            f"that a reader can get the same model, and a folder on this machine is not such a name. Publish the "
            f"folder on the Hugging Face hub and train on model.name=hf-hub:ORG/REPO, or train on an open_clip "
            f"model and tag.")
    if not allow_local_weights:
        raise PromptclipError(
            f"{run_dir} was trained on the local weights file {local}: an export names its backbone so that a reader "
            f"can get the same weights (an open_clip tag or an hf-hub: id), and a file on this machine is neither. "
            f"Train on published weights (model.pretrained=TAG, or model.name=hf-hub:ORG/REPO), or pass "
            f"--allow-local-weights to record the file's name and sha256 (a reader then needs that very file, put in "
            f"the exported folder).")
    recorded, path = _recorded_sha256(stored), Path(local)
    digest = local_weights_sha256(path) if path.is_file() else recorded
    if digest is None:
        raise PromptclipError(f"{run_dir} was trained on the weights file {local}, which is gone, and its "
                              f"{runs.IDENTITY} records no sha256 of it: put the file back to export the run.")
    if recorded is not None and digest != recorded:
        raise PromptclipError(f"The weights file {local} changed since {run_dir} was trained on it (sha256 {recorded} "
                              f"then, {digest} now): put the file the run was trained on back to export it.")
    return {"file": path.name, "sha256": digest}


def _evaluations(run_dir: Path) -> List[dict]:
    """The run's other evaluations (``evals/*.json``: other class sets, other datasets); damaged ones are skipped."""
    found = []
    for path in sorted((run_dir / runs.EVALS).glob("*.json")):
        try:
            data = run_files.read_scored(path, "an evaluation result")
        except runs.CorruptFile as err:
            log.warning("%s It is left out of the export.", err)
            continue
        if data is not None:
            found.append({k: data.get(k) for k in ("dataset", "label", "subsample", "test")})
    return found


def adapter_config(meta: dict, result: dict, stored: runs.Identity, weights: Dict[str, object],
                   evaluations: List[dict]) -> dict:
    """adapter_config.json: PEFT's keys, then everything prompts.json records and what the run measured."""

    backbone = dict(meta["backbone"], **({"pretrained": weights["file"]} if weights else {}))
    return {
        "peft_type": PEFT_TYPE,
        "base_model_name_or_path": backbone["model"],
        "revision": backbone["pretrained"],  # open_clip's weights tag (a checkpoint's file name); None: hf-hub/random
        "inference_mode": True,
        "adapter_format": ADAPTER_FORMAT,
        **{k: v for k, v in meta.items() if k != "backbone"},
        "backbone": backbone,
        **({"weights_sha256": weights["sha256"]} if weights else {}),
        "exported_with": versions(),
        "run": {k: result.get(k) for k in ("fingerprint", "method", "dataset", "subsample", "shots", "seed",
                                           "num_classes", "num_train_images", "num_parameters", "hyperparameters",
                                           "test", "finished_at")},
        "evaluations": evaluations,
        "training": {k: v for k, v in stored.settings.items() if runs.within(k, TRAINING_SETTINGS)},
    }


def _percent(metrics: Optional[dict], key: str) -> str:
    value = metrics.get(key) if isinstance(metrics, dict) else None
    return f"{value:.2f}" if isinstance(value, (int, float)) and not isinstance(value, bool) else "—"


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def model_card(config: dict, folder_name: str) -> str:
    """README.md: what the adapter is, how it did, how to load it and how to share it."""
    run, backbone = config["run"], config["backbone"]
    method = config.get("method") or config["learners"]["text"]["name"]
    model = backbone["model"]
    shots = run.get("shots")
    shots_text = {0: "zero-shot (no training images)", -1: "all training images"}.get(shots, f"{shots} per class")
    learners = [f"- {side} learner: `{json.dumps(options)}`" for side, options in config["learners"].items()]
    losses = [f"- loss `{name}`: `{json.dumps(options)}`" for name, options in config.get("losses", {}).items()]
    tensors = [f"  - `{name}`: {list(shape)}" for name, shape in config.get("shapes", {}).items()]
    training = [f"- `{k}`: `{json.dumps(v)}`" for k, v in config["training"].items()]
    classes = config["classnames"]
    lines = [
        *_front_matter(method, model), "",
        f"# {method} on {run.get('dataset')} ({shots_text}, seed {run.get('seed')})", "",
        f"A promptclip adapter: {method} learned on a frozen open_clip CLIP (`{model}`). "
        f"This folder holds only what was learned ({config.get('num_parameters', '?')} numbers); the backbone is "
        f"fetched by open_clip from its name.", "",
        "## Method", "", f"- method: `{method}`", *learners, *losses, "- learned tensors:", *tensors, "",
        "## Backbone and weights", "", f"- open_clip model: `{model}`", f"- weights: {_weights_text(config)}",
        f"- template: `{config['template']}`", "",
        "## Data", "", f"- dataset: {run.get('dataset')} (classes: {run.get('subsample')})", f"- shots: {shots_text}",
        f"- training images: {run.get('num_train_images')}, seed {run.get('seed')}",
        f"- {len(classes)} classes: {', '.join(f'`{c}`' for c in classes)}", "",
        "## Results", "", *_results_table(config), "",
        "## Training", "", *training, "",
        *_use_and_share(folder_name, config.get("versions", {})),
        "## Files", "",
        f"- `{ADAPTER_CONFIG}`: PEFT's keys (`peft_type: {PEFT_TYPE}`, `base_model_name_or_path`, `revision`: the "
        f"weights tag) and promptclip's: method, learner and loss options, class names, template, tensor shapes, "
        f"the run's result and training settings, versions",
        f"- `{ADAPTER_MODEL}`: the learned tensors (the run's prompts.safetensors)", "",
    ]
    return "\n".join(lines)


def _front_matter(method: str, model: str) -> List[str]:
    """The card's YAML header, as the hub reads it (library, tags, task, and the base model of a hub backbone)."""
    front = ["---", "library_name: promptclip", f"tags: [promptclip, open_clip, clip, prompt-learning, {method}]",
             "pipeline_tag: image-classification"]
    if model.startswith("hf-hub:"):
        front.append(f"base_model: {model[len('hf-hub:'):]}")
    return front + ["---"]


def _weights_text(config: dict) -> str:
    """Where the backbone's weights come from, in words."""
    model, tag = config["backbone"]["model"], config["backbone"]["pretrained"]
    if "weights_sha256" in config:
        return (f"the local checkpoint `{tag}` (sha256 `{config['weights_sha256']}`): put that very file in this "
                f"folder to load the adapter")
    if model.startswith("hf-hub:"):
        return f"those of the Hugging Face hub repository `{model[len('hf-hub:'):]}`"
    if tag is None:
        return "random (seeded, the same on every machine: for tests and demos, its accuracy means nothing)"
    return f"open_clip's `{tag}`"


def _results_table(config: dict) -> List[str]:
    """The run's test metrics and its evaluations', one row each, as a Markdown table."""
    run = config["run"]
    rows = [("test", run.get("dataset"), run.get("subsample"), run.get("test"))]
    rows += [("evaluation", e.get("dataset"), e.get("subsample"), e.get("test")) for e in config["evaluations"]]
    table = ["| evaluation | dataset | classes | accuracy (%) | macro-F1 (%) | seed |", "|---|---|---|---|---|---|"]
    return table + [f"| {what} | {_cell(dataset)} | {_cell(subsample)} | {_percent(m, 'accuracy')} | "
                    f"{_percent(m, 'macro_f1')} | {run.get('seed')} |" for what, dataset, subsample, m in rows]


def _use_and_share(folder_name: str, made: dict) -> List[str]:
    """The card's "Use" and "Share" sections: loading the folder with promptclip, and publishing it on the hub."""
    return [
        "## Use", "",
        f"With promptclip {made.get('promptclip', '')} and open_clip {made.get('open_clip', '')} (or later) installed:",
        "", "```python", "import promptclip", "", f'adapter = promptclip.load_run("{folder_name}")',
        'print(adapter.predict(["img.jpg"], topk=3))  # [{"path": ..., "top": [(classname, probability), ...]}]',
        "```", "", "```bash", f"promptclip predict {folder_name} img.jpg --topk 3", "```", "",
        "From the hub: `promptclip.load_run(huggingface_hub.snapshot_download(\"YOUR_NAME/REPO\"))`.", "",
        "## Share", "",
        "Not done by the export: to publish this folder, log in (`huggingface-cli login`), create the repository "
        "on the hub, then:", "",
        "```python", "from huggingface_hub import upload_folder", "",
        f'upload_folder(repo_id="YOUR_NAME/REPO", folder_path="{folder_name}", repo_type="model")', "```", "",
    ]


def export_run(run_dir: Union[str, Path], out_dir: Union[str, Path], overwrite: bool = False,
               allow_local_weights: bool = False) -> Path:
    """Write the finished run ``run_dir`` as an adapter folder ``out_dir``; returns ``out_dir``. Refuses a run that
    has not finished, a non-empty ``out_dir`` (unless ``overwrite``, which replaces the export's three files and
    leaves others) and a backbone loaded from a local file (unless ``allow_local_weights``)."""
    from .prompts import read_meta, read_tensors
    from .runner import finished_run

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    _, stored = finished_run(run_dir)
    result = run_files.read_result(run_dir)
    if result.get("fingerprint") != stored.fingerprint:
        raise PromptclipError(f"{run_dir / runs.RESULT} belongs to another run than its {runs.IDENTITY} (fingerprint "
                              f"{result.get('fingerprint')} against {stored.fingerprint}): {runs.REDO}")
    meta = read_meta(run_dir)
    data, _ = read_tensors(run_dir, meta)
    weights = _weights(meta, stored, run_dir, allow_local_weights)
    if out_dir.exists() and not out_dir.is_dir():
        raise PromptclipError(f"{out_dir} is a file: give a new folder (or an empty one) to export into.")
    if out_dir.exists() and out_dir.resolve() == run_dir.resolve():
        raise PromptclipError(f"{out_dir} is the run folder itself: give a folder of its own to export into.")
    present = sorted(p.name for p in out_dir.iterdir()) if out_dir.is_dir() else []
    if present and not overwrite:
        raise PromptclipError(f"{out_dir} exists and is not empty ({', '.join(present[:3])}"
                              f"{' ...' if len(present) > 3 else ''}): give a new folder, or pass --overwrite to "
                              f"replace its {ADAPTER_CONFIG}, {ADAPTER_MODEL} and {MODEL_CARD}.")
    config = adapter_config(meta, result, stored, weights, _evaluations(run_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / ADAPTER_CONFIG).unlink(missing_ok=True)  # written last: until then the folder is no export
    atomic_write_bytes(out_dir / ADAPTER_MODEL, data)
    atomic_write_text(out_dir / MODEL_CARD, model_card(config, out_dir.resolve().name))
    atomic_write_json(out_dir / ADAPTER_CONFIG, config)
    return out_dir


EXPORT_HELP = (f"Write the finished run RUN as a self-contained folder DIR in PEFT's layout: {ADAPTER_CONFIG} "
               f"(base model, weights tag, method, options, class names, result), {ADAPTER_MODEL} (the learned "
               f"tensors) and a {MODEL_CARD} model card (results, how to load it, the huggingface_hub.upload_folder "
               f"call that shares it). promptclip.load_run(DIR) and promptclip predict DIR IMAGE read it like the "
               f"run. A run on a local weights file is refused unless --allow-local-weights.")


def add_export_command(subparsers) -> argparse.ArgumentParser:
    """Add ``export`` to an argparse subparsers object; the handler is ``args.func``."""
    import textwrap

    parser = subparsers.add_parser("export", help="write a finished run as a shareable adapter folder (PEFT's layout)",
                                   description=textwrap.fill(EXPORT_HELP, 110)
                                   + "\n\nexamples:\n  promptclip export RUN_DIR exported/coop-dtd",
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", type=Path, metavar="RUN", help="a finished run folder")
    parser.add_argument("out_dir", type=Path, metavar="DIR", help="a new (or empty) folder to write")
    parser.add_argument("--overwrite", action="store_true",
                        help=f"replace the {ADAPTER_CONFIG}, {ADAPTER_MODEL} and {MODEL_CARD} of a folder that is "
                             f"not empty (other files stay)")
    parser.add_argument("--allow-local-weights", action="store_true",
                        help="export a run trained on a local checkpoint file, recording its file name and sha256 "
                             "(readers need that very file, put in DIR)")
    parser.set_defaults(func=export_command)
    return parser


def export_command(args: argparse.Namespace) -> int:
    out = export_run(args.run_dir, args.out_dir, overwrite=args.overwrite,
                     allow_local_weights=args.allow_local_weights)
    print(f"Exported {args.run_dir} to {out}: promptclip.load_run({str(out)!r}) or promptclip predict {out} IMAGE "
          f"loads it; {out / MODEL_CARD} says how to share it.")
    return 0
