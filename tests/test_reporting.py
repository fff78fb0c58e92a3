"""output.report_to: TensorBoard events and an offline W&B run hold each step's loss and lr, each epoch's metrics.jsonl
line and result.json's test metrics; a resumed run logs each step once; report_to is not part of a run's identity."""
import glob
import json
import struct
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from bench_fixtures import coloured_folder
from promptclip.config import build_config
from promptclip.engine import run
from promptclip.engine.reporting import TENSORBOARD_DIR, WANDB_RUN, RunReporter
from promptclip.errors import PromptclipError
from promptclip.runs import default_run_dir

STEPS = 3  # 3 classes × 2 shots = 6 images in batches of 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return coloured_folder(tmp_path_factory.mktemp("colours") / "images")


def config(root, tmp_path, report_to="[tensorboard]", **changes):
    settings = {"data.root": root, "model.name": "tiny-vit", "model.pretrained": "null", "data.shots": 2,
                "train.epochs": 2, "train.batch_size": 2, "train.device": "cpu", "text.n_ctx": 4,
                "output.root": tmp_path / "runs", "output.cache_dir": tmp_path / "cache",
                "output.report_to": report_to, **changes}
    return build_config(["coop"], [f"{k}={v}" for k, v in settings.items()])


def events(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def scalars(accumulator, tag):
    return [(e.step, e.value) for e in accumulator.Scalars(tag)]


def metric_lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_tensorboard_holds_steps_epochs_test_metrics_and_config(folder, tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = config(folder, tmp_path)
    result = run(cfg, progress=False)
    run_dir = default_run_dir(cfg)
    acc, lines = events(run_dir), metric_lines(run_dir)
    losses = scalars(acc, "train/loss")
    assert [step for step, _ in losses] == list(range(2 * STEPS))
    for line in lines:  # the epoch's loss is the mean of its steps' losses (batches of one size)
        steps = [value for step, value in losses if step // STEPS == line["epoch"]]
        assert sum(steps) / STEPS == pytest.approx(line["loss"], rel=1e-5)
    lrs = [line["lr"] for line in lines for _ in range(STEPS)]
    assert [v for _, v in scalars(acc, "train/lr")] == pytest.approx(lrs)
    assert scalars(acc, "epoch/train_accuracy") == [
        ((line["epoch"] + 1) * STEPS - 1, pytest.approx(line["train_accuracy"])) for line in lines]
    assert [v for _, v in scalars(acc, "epoch/loss")] == pytest.approx([line["loss"] for line in lines])
    assert scalars(acc, "test/accuracy") == [(2 * STEPS, pytest.approx(result["test"]["accuracy"]))]
    assert scalars(acc, "test/macro_f1") == [(2 * STEPS, pytest.approx(result["test"]["macro_f1"]))]
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("```yaml\nmethod: coop\n") and "report_to: [tensorboard]" in text
    plugin = {tag: plugin_data_pb2.HParamsPluginData.FromString(content)
              for tag, content in acc.PluginTagToContent("hparams").items()}
    hparams = plugin["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["text.n_ctx"].number_value == 4 and hparams["text.name"].string_value == "coop"
    assert [m.name.tag for m in plugin["_hparams_/experiment"].experiment.metric_infos] == ["test/accuracy",
                                                                                           "test/macro_f1"]
    run(cfg, progress=False, replace=True)  # a run that starts clean drops what the replaced one reported
    assert len(list((run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))) == 1
    assert [step for step, _ in scalars(events(run_dir), "train/loss")] == list(range(2 * STEPS))


def test_report_to_is_not_part_of_the_identity(folder, tmp_path):
    plain = config(folder, tmp_path, report_to="[]")
    result = run(plain, progress=False)
    run_dir = default_run_dir(plain)
    reported = config(folder, tmp_path)
    assert default_run_dir(reported) == run_dir
    assert run(reported, progress=False) == result  # the finished run is reused, not redone
    assert not (run_dir / TENSORBOARD_DIR).exists()


class Interrupt(Exception):
    pass


def test_a_resumed_run_logs_each_step_once(folder, tmp_path):
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    cfg = config(folder, tmp_path, **{"train.epochs": 4, "train.checkpoint_every": 2})

    def stop_after_third_epoch(epoch):
        if epoch == 2:
            raise Interrupt

    with pytest.raises(Interrupt):  # the checkpoint holds 2 epochs; the third is logged, and repeated on resume
        run(cfg, progress=False, on_epoch_end=stop_after_third_epoch)
    run(cfg, progress=False)
    run_dir = default_run_dir(cfg)
    files = sorted((run_dir / TENSORBOARD_DIR).glob("events.out.tfevents.*"))
    assert len(files) == 2, files
    raw = [[(e.step, v.tag) for e in EventFileLoader(str(f)).Load() for v in e.summary.value] for f in files]
    logged = [step for part in raw for step, tag in part if tag == "train/loss"]
    assert sorted(logged) == sorted([*range(4 * STEPS), *range(2 * STEPS, 3 * STEPS)])  # epoch 2 twice on disk
    starts = [e.step for e in EventFileLoader(str(files[1])).Load() if e.session_log.status == e.session_log.START]
    assert starts == [2 * STEPS]  # ... and hidden from TensorBoard from the resumed epoch's first step
    acc = events(run_dir)
    assert [step for step, _ in scalars(acc, "train/loss")] == list(range(4 * STEPS))
    assert [v for _, v in scalars(acc, "epoch/loss")] == pytest.approx([line["loss"] for line in metric_lines(run_dir)])
    assert [step for step, _ in scalars(acc, "epoch/loss")] == [STEPS * e - 1 for e in (1, 2, 3, 4)]


def wandb_records(path: Path):
    """The records of a ``.wandb`` file (LevelDB log blocks after W&B's 7-byte header) as protobuf ``Record``s."""
    from wandb.proto import wandb_internal_pb2

    data, block, pos, pending, records = path.read_bytes(), 32768, 7, b"", []
    assert data[:4] == b":W&B"
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:
            break
        pending, pos = pending + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # FULL or LAST
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


@pytest.mark.slow
def test_wandb_offline_run_holds_config_steps_and_test_metrics(folder, tmp_path, monkeypatch):
    for name, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": tmp_path / "wandb-dir",
                        "WANDB_CONFIG_DIR": tmp_path / "wandb-config", "WANDB_CACHE_DIR": tmp_path / "wandb-cache",
                        "WANDB_DATA_DIR": tmp_path / "wandb-data", "WANDB_PROJECT": "promptclip-tests"}.items():
        monkeypatch.setenv(name, str(value))
    cfg = config(folder, tmp_path, report_to="[wandb,tensorboard]", **{"optim.lr": 0.0125})
    result = run(cfg, progress=False)
    run_dir = default_run_dir(cfg)
    assert events(run_dir).Scalars("test/accuracy")[0].value == pytest.approx(result["test"]["accuracy"])
    stored = json.loads((run_dir / WANDB_RUN).read_text())["id"]
    (path,) = glob.glob(str(run_dir / "wandb" / f"offline-run-*-{stored}" / f"run-{stored}.wandb"))
    records = wandb_records(Path(path))
    (started,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert started.run_id == stored and started.project == "promptclip-tests"
    assert started.display_name == str(run_dir.relative_to(tmp_path / "runs"))
    config_values = {u.key: json.loads(u.value_json) for u in started.config.update}
    assert config_values["optim"]["lr"] == 0.0125 and config_values["output"]["report_to"] == ["wandb", "tensorboard"]
    rows = [{i.nested_key[0] if i.nested_key else i.key: json.loads(i.value_json) for i in r.history.item}
            for r in records if r.WhichOneof("record_type") == "history"]
    assert [row["_step"] for row in rows if "train/loss" in row] == list(range(2 * STEPS))
    lines = metric_lines(run_dir)
    assert [row["epoch/loss"] for row in rows if "epoch/loss" in row] == pytest.approx([line["loss"] for line in lines])
    summary = {}
    for r in records:
        if r.WhichOneof("record_type") == "summary":
            summary.update({u.nested_key[0] if u.nested_key else u.key: json.loads(u.value_json)
                            for u in r.summary.update})
    assert summary["test/accuracy"] == pytest.approx(result["test"]["accuracy"])
    assert summary["test/macro_f1"] == pytest.approx(result["test"]["macro_f1"])
    assert [r for r in records if r.WhichOneof("record_type") == "exit"][0].exit.exit_code == 0


@pytest.mark.parametrize("tool, module", [("tensorboard", "torch.utils.tensorboard"), ("wandb", "wandb")])
def test_a_missing_package_names_its_extra_before_anything_runs(folder, tmp_path, monkeypatch, tool, module):
    monkeypatch.setitem(sys.modules, module, None)  # importing it raises ImportError
    with pytest.raises(PromptclipError, match=rf"pip install 'promptclip\[{tool}\]'"):
        run(config(folder, tmp_path, report_to=f"[{tool}]"), progress=False)
    assert not (tmp_path / "runs").exists()



class FakeWandbRun:
    """What the reporter uses of a W&B run; ``step`` as a resumed online run gives it (the next step to log): the
    n-th run started holds 4·n steps."""

    def __init__(self, made, **settings):
        self.init, self.id, self.step = settings, settings["id"], 4 * len(made)
        self.settings = SimpleNamespace(mode="fake")
        self.logged, self.summary, self.exit_code = [], {}, None
        made.append(self)

    def log(self, values, step):
        self.logged.append(step)

    def finish(self, exit_code):
        self.exit_code = exit_code


def test_a_resumed_run_continues_its_wandb_run_and_a_fresh_one_starts_another(tmp_path, monkeypatch):
    made = []
    monkeypatch.setitem(sys.modules, "wandb", SimpleNamespace(init=lambda **kw: FakeWandbRun(made, **kw)))
    cfg = config(tmp_path / "images", tmp_path, report_to="[wandb]")
    with RunReporter(cfg, tmp_path, resumed=False) as first:
        first.open()
    stored = json.loads((tmp_path / WANDB_RUN).read_text())["id"]
    assert made[0].id == stored and made[0].init["resume"] == "allow" and made[0].exit_code == 0
    assert made[0].init["config"]["text"]["n_ctx"] == 4
    with pytest.raises(Interrupt), RunReporter(cfg, tmp_path, resumed=True) as again:
        again.open()
        again.begin(1, STEPS)
        for step in range(STEPS):
            again.step(1, step, 1.0, 0.1)
        raise Interrupt
    assert made[1].id == stored  # the same W&B run, which holds steps 0-3 already: they are not sent again
    assert made[1].logged == [4, 5] and made[1].exit_code == 1
    with RunReporter(cfg, tmp_path, resumed=False) as fresh:
        fresh.open()
    assert made[2].id != stored and json.loads((tmp_path / WANDB_RUN).read_text())["id"] == made[2].id
