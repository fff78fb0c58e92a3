"""One run, start to finish: config → data → model → train → save prompts → evaluate → ``result.json``.

The run folder's key, layout, file names and identity belong to :mod:`promptclip.runs`, reading its files to
:mod:`promptclip.run_files`. A finished run is reused and an interrupted one resumed only for the same settings; one
process at a time writes a run folder, and appends the run's log lines to its ``log.txt``.
"""
from __future__ import annotations

import contextlib
import logging
import logging.handlers
import shutil
import time
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import yaml

from .. import run_files, runs
from ..backbone import FrozenCLIP
from ..callbacks import build_callbacks
from ..config import Config, load_resolved, to_yaml
from ..data.base import Dataset
from ..data.fewshot import (content_signature, dataset_checksum, describe_shortfall, draw_few_shot, shortfall,
                            subsample_classes)
from ..data.reading import load_dataset
from ..errors import ConfigError, PromptclipError, TrainingError, UnregisteredInConfig
from ..hooks import PrepareContext
from ..model import ModelParts, PromptedCLIP, create_model
from ..utils import atomic_write_json, seed_everything, versions
from .cache import TrainingViews, frozen_features
from .distributed import Distributed
from .evaluation import metrics_from_predictions, predict_loader
from .inputs import TrainingInputs, evaluation_inputs
from .linear_probe import fit_linear_probe
from .reporting import RunReporter
from .setup import RunSetup, Silent
from ..devices import resolve_device, resolve_precision
from .prompts import load_prompts, save_prompts
from .trainer import console_loggers, console_through_bars, show_bars, train

log = logging.getLogger("promptclip")


def prepare_data(cfg: Config, shots: Optional[int] = None, subsample: Optional[str] = None,
                 split_dir: Optional[Path] = None) -> Dataset:
    """Read the dataset, draw the few-shot split (before class subsampling, as the reference does), subsample."""
    return prepare_run_data(cfg, shots, subsample, split_dir)[0]


def prepare_run_data(cfg: Config, shots: Optional[int] = None, subsample: Optional[str] = None,
                     split_dir: Optional[Path] = None, quiet: bool = False) -> Tuple[Dataset, Optional[dict]]:
    """:func:`prepare_data`, and the draw's shortfall among the classes in use (a :func:`~promptclip.data.fewshot.
    shortfall` record, None when every class has the shots), logged each time the draw is used (unless ``quiet``:
    a finished run's data read again only to check it is unchanged)."""
    ds = load_dataset(cfg.data.name, cfg.data.root, split_dir=split_dir, **cfg.data.options)
    for note in ds.notes if not quiet else ():
        log.info("%s", note)
    shots = cfg.data.shots if shots is None else shots
    short: Dict[int, int] = {}
    if shots > 0 and ds.train:
        ds, short = draw_few_shot(ds, shots, cfg.seed, Path(cfg.output.cache_dir))
    used = subsample_classes(ds, cfg.data.subsample if subsample is None else subsample)
    record = shortfall(ds, short, shots, used)
    if record is not None and not quiet:
        log.warning("%s", describe_shortfall(f"{used.name} train", record))
    return used, record


def data_signature(cfg: Config, dataset: Dataset) -> dict:
    """The signature of the training data a run of ``cfg`` reads (empty for one that reads none, e.g. zero-shot)."""
    return content_signature(dataset) if runs.effective_shots(cfg) != 0 else {}


def data_change(cfg: Config, run_dir: Path, stored: runs.Identity) -> Optional[str]:
    """Why the run in ``run_dir`` (identity ``stored``) was made on other training data than ``cfg`` reads now (None:
    the same, or not recorded): checked before a finished run is reused, by ``train`` and ``bench`` alike."""
    if not stored.data:
        return None
    dataset = prepare_run_data(cfg, split_dir=run_dir, quiet=True)[0]
    return runs.data_changes(stored, data_signature(cfg, dataset), run_dir)


def build_model(cfg: Config, backbone: FrozenCLIP, dataset: Dataset,
                context: Optional[PrepareContext] = None) -> PromptedCLIP:
    """The model of run config ``cfg`` on ``dataset`` (prepared on the data with ``context``), by the one factory."""
    return create_model(ModelParts.of(cfg, dataset), backbone, context)


def prepare_context(cfg: Config, backbone: FrozenCLIP, dataset: Dataset, setup: RunSetup,
                    views: TrainingViews) -> PrepareContext:
    """What learners, losses and callbacks see before training: training views from ``views`` (and its cache),
    the few-shot validation split's test-transform features (none where val is the test split)."""
    def validation():
        if not dataset.val or dataset.val_is_test:
            return None
        return frozen_features(backbone, dataset.val, cfg.output.cache_dir, cfg.train.eval_batch_size,
                               cfg.data.num_workers, setup.device, setup.precision, "val features",
                               show_bars(setup.progress), max_gb=cfg.output.cache_max_gb)

    return PrepareContext(backbone=backbone, classnames=dataset.classnames, template=dataset.template,
                          dataset=dataset.name, device=setup.device, epochs=cfg.train.epochs,
                          train_features=lambda: views.features(0), train_view=views.features,
                          val_features=validation)


def load_backbone(cfg: Config, device: torch.device) -> FrozenCLIP:
    return FrozenCLIP.load(cfg.model.name, cfg.model.pretrained, device=device, cache_dir=cfg.model.cache_dir)


def run(cfg: Config, progress: bool = True, on_epoch_end: Optional[Callable[[int], None]] = None,
        backbone: Optional[FrozenCLIP] = None, distributed=None, replace: bool = False,
        key: Optional[runs.RunKey] = None) -> dict:
    """Train and evaluate one configuration; returns (and writes) its result.

    ``key`` names the run in its result (a sweep's, with its protocol's names and grid point); by default the
    config's own (:meth:`promptclip.runs.RunKey.of`).

    A finished run with the same settings is read back; an interrupted one resumes. A folder holding a run made with
    other settings is an error (``replace=True`` deletes that run first). A run that fails before it trains leaves
    no folder and no lock behind. The main process holds the run's lock. Launched by torchrun and given no
    ``distributed``, the process joins the process group for this run (one DDP run; the other processes return
    ``{}`` and log only warnings).

    The run's log lines go to the console and to the run folder's ``log.txt`` alike. ``progress`` shows progress on
    the console: bars on a terminal (the lines they stand for go to ``log.txt`` only), plain lines elsewhere. Off,
    no bars: the lines go to ``log.txt`` and to the console handlers the caller set up (the CLI's ``--no-progress``).
    Called from Python with no console handler, the run adds one on stderr while it lasts (warnings only with
    ``progress`` off) and logs at INFO unless the ``promptclip`` logger's level was set.
    """
    joined = distributed is None and Distributed.launched()
    if joined:
        distributed = Distributed.from_env()
    quiet = distributed is not None and not distributed.is_main
    level = log.level
    if quiet:
        log.setLevel(logging.WARNING)
    elif level == logging.NOTSET:
        log.setLevel(logging.INFO)
    try:
        with _console(progress and not quiet):
            return _run_locked(cfg, progress and not quiet, on_epoch_end, backbone, distributed, replace, key)
    finally:
        log.setLevel(level)
        if joined:
            distributed.close()


@contextlib.contextmanager
def _console(progress: bool):
    """A stderr handler for promptclip's lines while the run lasts, where none prints them to a console yet (a
    Python caller that configured no logging); with ``progress`` off it shows only warnings."""
    if console_loggers():
        yield
        return
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("[promptclip] %(message)s"))
    handler.setLevel(logging.NOTSET if progress else logging.WARNING)
    log.addHandler(handler)
    try:
        yield
    finally:
        log.removeHandler(handler)


def _run_locked(cfg: Config, progress: bool, on_epoch_end, backbone, distributed, replace: bool,
                key: Optional[runs.RunKey]) -> dict:
    if cfg.text is None:
        raise ConfigError("No text learner: set text.name (coop, zeroshot, ...) or use a preset (-c coop).")
    cfg = runs.resolve(cfg)
    key = key or runs.RunKey.of(cfg)
    run_dir = runs.default_run_dir(cfg)
    identity = runs.Identity.of(cfg)
    is_main = distributed is None or distributed.is_main
    lock = run_files.RunLock(run_dir)
    with lock if is_main else contextlib.nullcontext(), _run_log(run_dir if is_main else None) as own:
        state = _claim(run_dir, identity, replace, distributed, lambda stored: data_change(cfg, run_dir, stored))
        if state.status == "done":
            log.info("%s already finished on %s with these settings; reusing its result.", run_dir,
                     state.result.get("finished_at", "an earlier date"))
            return state.result if is_main else {}
        try:  # the reporter checks its packages first: a missing one fails before anything is written
            reporter = RunReporter(cfg, run_dir, state.status == "resume") if is_main and cfg.output.report_to else None
            with console_through_bars(show_bars(progress)), reporter or contextlib.nullcontext():
                return _run(cfg, key, run_dir, identity, state, is_main, progress, on_epoch_end, backbone,
                            distributed, own, reporter)
        except BaseException as err:
            if is_main and (run_dir / runs.IDENTITY).is_file():
                if isinstance(err, TrainingError):
                    atomic_write_json(run_dir / runs.FAILED, {"error": str(err), "at": runs.now()})
            elif is_main:  # stopped before the folder became this run's: take back what it wrote
                run_files.clear(run_dir)
                lock.leave_nothing()
            raise


@contextlib.contextmanager
def _run_log(run_dir: Optional[Path]):
    """Yields ``own()``: from then on (the folder belongs to the run) the run's log lines, with those held back
    before it, are appended to ``run_dir/log.txt`` with timestamps. ``run_dir`` None (not the main process): none."""
    held = logging.handlers.MemoryHandler(capacity=1, flushOnClose=False)  # holds lines until it has a target

    def own() -> None:
        if run_dir is not None:
            target = logging.FileHandler(run_dir / runs.LOG, mode="a", encoding="utf-8")
            target.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
            held.setTarget(target)
            held.flush()

    if run_dir is not None:
        log.addHandler(held)
    try:
        yield own
    finally:
        log.removeHandler(held)
        if held.target is not None:
            held.target.close()
        held.close()


def _claim(run_dir: Path, identity: runs.Identity, replace: bool, distributed,
           changed_data: Callable[[runs.Identity], Optional[str]]) -> run_files.RunState:
    """Decide (on the main process) whether the folder is reused, resumed, or started clean; share the decision.
    ``replace`` starts clean whatever the folder holds; a finished run is reused only if ``changed_data(stored)``
    finds its training data as it read it."""
    def decide() -> run_files.RunState:
        state = run_files.run_state(run_dir, identity)
        if replace:
            if state.status != "new":
                log.warning("Replacing the run in %s (--replace).", run_dir)
            state.status = "new"
        elif state.status == "done" and (changed := changed_data(state.stored)):
            raise runs.RunMismatch(f"{changed}\n{_NOT_REUSED}")
        elif state.status == "other" and state.failure is not None:
            log.info("%s holds a failed run with other settings; starting clean.", run_dir)
        elif state.status == "other":
            raise runs.RunMismatch(run_files.mismatch_message(state))
        elif state.status == "corrupt" and state.stored is not None:
            log.warning("%s Its settings are the same: redoing it now.", state.problem)
        elif state.status == "corrupt":
            raise runs.CorruptFile(f"{state.problem} Its settings are unknown: use --replace to redo the run in "
                                   f"this folder, or another folder (output.dir=...).")
        elif state.status == "failed":
            log.warning("%s failed before with these same settings (%s); resuming from its last good checkpoint "
                        "will likely fail again.", run_dir, str(state.failure.get("error", "?")).split(". ")[0])
            (run_dir / runs.FAILED).unlink(missing_ok=True)
            state.status = "resume"
        if state.status in ("other", "corrupt", "new"):
            run_files.clear(run_dir)
            state = run_files.RunState("new", run_dir)
        return state

    if distributed is None:
        return decide()
    outcome = None
    if distributed.is_main:
        try:
            outcome = decide()
        except PromptclipError as err:
            outcome = err
    outcome = distributed.share(outcome)
    if isinstance(outcome, PromptclipError):
        raise outcome
    return outcome


_NOT_REUSED = ("It is neither reused nor resumed. Redo it on the data as it is now with --replace (deletes its "
               "results and checkpoint), or keep it and give the new run a folder of its own (output.dir=NEW_FOLDER).")


def _elapsed_before(run_dir: Path, state: run_files.RunState) -> float:
    """Seconds the earlier segments of a resumed run spent (0 for a new one, or when the record is unreadable)."""
    if state.status != "resume":
        return 0.0
    try:
        record = run_files.read_json(run_dir / runs.ELAPSED, "a run's elapsed time", ("seconds",))
    except runs.CorruptFile as err:
        log.warning("%s Counting train_seconds from this segment only.", err)
        return 0.0
    seconds = record.get("seconds") if record else 0.0
    return float(seconds) if isinstance(seconds, (int, float)) and not isinstance(seconds, bool) else 0.0


def _run(cfg: Config, key: runs.RunKey, run_dir: Path, identity: runs.Identity, state: run_files.RunState,
         is_main: bool, progress: bool, on_epoch_end: Optional[Callable[[int], None]], backbone: Optional[FrozenCLIP],
         distributed, own: Callable[[], None], reporter: Optional[RunReporter] = None) -> dict:
    device = distributed.device if distributed is not None else resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    bars = show_bars(progress)
    seed_everything(cfg.seed)
    started = time.time() - _elapsed_before(run_dir, state)  # train_seconds sums every segment of the run
    dataset, short = prepare_run_data(cfg, split_dir=run_dir)
    identity.data = data_signature(cfg, dataset)
    if state.stored is not None and (changed := runs.data_changes(state.stored, identity.data, run_dir)):
        raise runs.RunMismatch(f"{changed}\n{_NOT_REUSED}")
    shortfall_field = {"shortfall": short} if short is not None else {}
    backbone = backbone if backbone is not None else load_backbone(cfg, device)
    if cfg.text.fits_in_closed_form:  # the linear probe: fitted on frozen features instead of prompts
        if cfg.vision is not None or cfg.losses or cfg.callbacks:
            raise ConfigError(f"{cfg.text.name} is fitted in closed form on frozen features: it takes no vision "
                              f"learner, losses or callbacks. Remove them (vision=null losses={{}} callbacks={{}}).")
        if not is_main:
            return {}
        _take_folder(run_dir, identity, cfg, own, reporter)
        fields = fit_linear_probe(cfg, backbone, dataset, device, precision, run_dir, bars)
        fields = {**shortfall_field, **fields, "precision": precision, "train_seconds": round(time.time() - started, 2)}
        return _finish(run_dir, cfg, key, identity, dataset, fields, reporter)
    setup = RunSetup(cfg, device, precision, run_dir, progress, distributed, reporter or Silent())
    views = TrainingViews(backbone, dataset.train, cfg.seed, cfg.train.views, cfg.data.augment,
                          cfg.train.eval_batch_size, cfg.data.num_workers, device, precision,
                          cfg.output.cache_dir if cfg.output.cache_views else None, bars, distributed,
                          max_gb=cfg.output.cache_max_gb)
    context = prepare_context(cfg, backbone, dataset, setup, views)
    model = build_model(cfg, backbone, dataset, context).to(device)
    log.info("%s on %s (%d classes, %d training images): %s", cfg.method_name, dataset.name,
             dataset.num_classes, len(dataset.train), model.parameter_report())
    callbacks = build_callbacks(cfg.callbacks)
    for callback in callbacks.values():
        callback.prepare(context, model)
    if is_main:  # everything loaded: from here on the folder belongs to these settings
        _take_folder(run_dir, identity, cfg, own, reporter)
    last = {}
    if cfg.train.epochs > 0 and not model.trainable_parameters():
        log.info("%s has no parameters to train: evaluating only.", cfg.method_name)
    elif cfg.train.epochs > 0:
        last = train(model, TrainingInputs(model, dataset.train, cfg, views), setup, callbacks,
                     _epoch_recorder(run_dir, started, is_main, on_epoch_end))
    chosen = {}
    for side, learner in model.learners().items():
        learner.after_training(context)
        chosen.update({f"{side}.{k}": v for k, v in learner.hyperparameters().items()})
    fields = {**shortfall_field, "num_parameters": sum(p.numel() for p in model.trainable_parameters()),
              "train_loss": last.get("loss"), "precision": precision, "train_seconds": round(time.time() - started, 2),
              **({"hyperparameters": chosen} if chosen else {})}
    if cfg.train.evaluate:  # every process evaluates its shard when distributed
        fields["test"] = evaluate_model(model, dataset, cfg, device, precision, bars, distributed=distributed)
    if not is_main:
        return {}
    save_prompts(model, run_dir, cfg.method_name, {"dataset": dataset.name, "subsample": cfg.data.subsample})
    return _finish(run_dir, cfg, key, identity, dataset, fields, reporter)


def _take_folder(run_dir: Path, identity: runs.Identity, cfg: Config, own: Callable[[], None], reporter) -> None:
    """The folder becomes this run's: its identity and config written, its log file and reporter opened."""
    run_files.write_identity(run_dir, identity, to_yaml(cfg))
    own()
    if reporter is not None:
        reporter.open()


def _epoch_recorder(run_dir: Path, started: float, is_main: bool, on_epoch_end) -> Callable[[int], None]:
    """After each epoch: the run's seconds so far (a resumed run counts on from them), then ``on_epoch_end``."""
    def epoch_done(epoch: int) -> None:
        if is_main:
            atomic_write_json(run_dir / runs.ELAPSED, {"seconds": round(time.time() - started, 2)})
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    return epoch_done


def _finish(run_dir: Path, cfg: Config, key: runs.RunKey, identity: runs.Identity, dataset: Dataset, fields: dict,
            reporter: Optional[RunReporter] = None) -> dict:
    """Write ``result.json`` (the run's key and identity, then ``fields``), drop the checkpoint, report the result.
    Its ``dataset`` is the data's own name (what a report without a manifest shows for results without a key); the
    key's is the folder's label."""
    result = {
        "method": key.method, "dataset": dataset.name, "subsample": key.subsample, "shots": key.shots,
        "seed": key.seed, "model": cfg.model.name, "pretrained": cfg.model.pretrained, "key": key.to_json(),
        "fingerprint": identity.fingerprint, "num_classes": dataset.num_classes,
        "num_train_images": len(dataset.train), "draw_checksum": dataset_checksum(dataset), **fields,
        "versions": versions(), "finished_at": runs.now(),
    }
    if "test" in result:
        log.info("%s on %s: test accuracy %.2f%%", cfg.method_name, dataset.name, result["test"]["accuracy"])
    atomic_write_json(run_dir / runs.RESULT, result)
    shutil.rmtree(run_dir / runs.CHECKPOINT_DIR, ignore_errors=True)  # the result and prompts are final now
    if reporter is not None:
        reporter.finish(result)
    return result


def evaluate_model(model: PromptedCLIP, dataset: Dataset, cfg: Config, device, precision, progress=True,
                   split: str = "test", distributed=None) -> Dict:
    """Metrics on ``split``. Image features that do not depend on prompts come from the feature cache; with
    ``distributed``, each process predicts its shard of the items and the predictions are gathered."""
    items = dataset.split(split)
    if not items:
        raise ConfigError(f"{dataset.name} has no {split} images to evaluate on.")
    if distributed is not None:
        items = distributed.shard(items)
    if not items:  # more processes than images
        preds, labels = torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    else:
        loader, encode = evaluation_inputs(model, items, cfg, device, precision, dataset.name, progress)
        logits, labels = predict_loader(model, loader, device, precision, f"eval {dataset.name}", encode, progress)
        preds = logits.argmax(-1)
    if distributed is not None:
        preds, labels = distributed.gather(preds, labels)
    return metrics_from_predictions(preds, labels, len(model.classnames))


def read_run_config(run_dir: Union[str, Path]) -> Config:
    """A run folder's saved ``config.yaml``, with errors that name the file."""
    path = Path(run_dir) / runs.CONFIG
    if not path.is_file():
        raise PromptclipError(f"{run_dir} is not a run folder: it has no {runs.CONFIG}. Give a folder made by "
                              f"promptclip train (e.g. runs/coop/ViT-B-16_openai/DescribableTextures/all/shots_16/"
                              f"seed_1).")
    try:
        return load_resolved(path)
    except UnregisteredInConfig as err:
        raise PromptclipError(f"{path} names something this Python has not registered ({err}). If the run was made "
                              f"with a plugin, load it (PROMPTCLIP_PLUGINS=module, or install the package that "
                              f"registers it) and retry; the run itself is fine.") from None
    except (ConfigError, yaml.YAMLError, UnicodeDecodeError) as err:
        raise runs.CorruptFile(f"{path} is damaged ({str(err).splitlines()[0]}); rerun the run's train command "
                               f"with --replace to redo it.") from None


def evaluation_config(base: Config, overrides: Sequence[str], run: str = "the run") -> Config:
    """A run's config with evaluation overrides; a training setting cannot change once the prompts exist."""
    from ..config import build_config, to_dict

    for text in overrides:
        key = text.split("=", 1)[0].strip()
        if not runs.within(key, runs.EVAL_SETTINGS):
            raise ConfigError(f"{key} is a training setting of {run}; evaluation can change only "
                              f"{', '.join(runs.EVAL_SETTINGS)}. Train a new run for other settings.")
    return build_config((), overrides, base=to_dict(base))


def evaluate_run(run_dir: Union[str, Path], overrides: Sequence[str] = (), progress: bool = True,
                 force: bool = False, label: Optional[str] = None) -> dict:
    """Evaluate a finished run's prompts on another class set or dataset (``data.name``, ``data.subsample``...).

    Only evaluation settings (``model.*``, ``data.*``, precision, device, batch size) may be overridden. The result
    goes to ``run_dir/evals/<dataset>-<subsample>-<fingerprint>.json``, keyed by everything that affects it; an
    existing one is returned (with ``"cached": true``) unless ``force``. ``label`` names the dataset in the file
    name, e.g. to tell two image folders apart.
    """
    run_dir = Path(run_dir)
    base, stored = finished_run(run_dir)
    key = finished_key(run_dir)
    cfg = evaluation_config(base, overrides, str(run_dir))
    identity = runs.eval_identity(cfg, stored.fingerprint)
    out = runs.eval_file(run_dir, label or runs.dataset_label(cfg), cfg.data.subsample, identity)

    def evaluate() -> dict:
        dataset = prepare_data(cfg, shots=0, split_dir=run_dir)
        metrics = evaluate_prompts(run_dir, cfg, dataset, "test", progress)
        return {"run": str(run_dir), "key": key.to_json(), "method": key.method, "dataset": dataset.name,
                "label": label or runs.dataset_label(cfg), "subsample": cfg.data.subsample, "seed": key.seed,
                "fingerprint": identity.fingerprint, "settings": identity.settings, "test": metrics,
                "finished_at": runs.now()}

    return stored_evaluation(run_dir, out, "test", force, evaluate)


def finished_run(run_dir: Path) -> Tuple[Config, runs.Identity]:
    """A finished run's saved config and identity, or an error saying to finish it."""
    run_files.refuse_links(run_dir)
    base = read_run_config(run_dir)
    stored = run_files.read_identity(run_dir)
    if stored is None or run_files.read_result(run_dir) is None:
        raise PromptclipError(f"{run_dir} has not finished training (no {runs.RESULT if stored else runs.IDENTITY}): "
                              f"run its train command first; it resumes where it stopped.")
    return base, stored


def finished_key(run_dir: Path) -> runs.RunKey:
    """The key a finished run's ``result.json`` records (:func:`promptclip.run_files.result_key`)."""
    return run_files.result_key(run_files.read_result(run_dir), run_dir)


def stored_evaluation(run_dir: Path, out: Path, metrics_key: str, force: bool, evaluate: Callable[[], dict]) -> dict:
    """The evaluation stored in ``out`` (with ``"cached": true``) unless ``force`` or it is missing or damaged;
    otherwise ``evaluate()``, run while holding the run's lock, written to ``out``."""
    try:
        cached = run_files.read_scored(out, "an evaluation result", metrics_key) if not force else None
    except runs.CorruptFile as err:
        log.warning("%s Evaluating again.", err)
        cached = None
    if cached is not None:
        return {**cached, "cached": True}
    with run_files.RunLock(run_dir):
        evaluation = evaluate()
        atomic_write_json(out, evaluation)
    return evaluation


def evaluate_prompts(run_dir: Path, cfg: Config, dataset: Dataset, split: str, progress: bool) -> Dict:
    """Metrics of the run's saved prompts on ``dataset``'s ``split``, under ``cfg``'s model and precision."""
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    model = load_prompts(run_dir, load_backbone(cfg, device), device)
    model.set_classnames(dataset.classnames, dataset.template, dataset.name)
    return evaluate_model(model, dataset, cfg, device, precision, show_bars(progress), split=split)
