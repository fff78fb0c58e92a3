"""torchrun with 2 CPU processes (gloo): exact sharded evaluation, DDP gradients equal to one process's, and a whole
run through ``promptclip train`` under torchrun. Run by the test below; each process executes ``worker``."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench_fixtures import TINY, coloured_folder

CPU = torch.device("cpu")


def overrides(data: Path, out: Path, *extra: str):
    return [*TINY, "data.name=imagefolder", f"data.root={data}", "data.shots=4", "train.batch_size=4",
            "train.epochs=1", f"output.root={out / 'runs'}", f"output.cache_dir={out / 'cache'}", *extra]


def worker(data: Path, out: Path) -> None:
    """Every check runs on both processes; an assertion error fails torchrun and so the test."""
    import torch.distributed as dist

    from promptclip.config import build_config
    from promptclip.data.loaders import open_image, transform_for
    from promptclip.cli import main
    from promptclip.engine.distributed import Distributed
    from promptclip.engine.runner import build_model, evaluate_model, load_backbone, prepare_data
    from promptclip.engine.setup import RunSetup
    from promptclip.engine.trainer import epoch_batches
    from promptclip.utils import seed_everything

    distributed = Distributed.from_env()
    assert distributed is not None and distributed.world_size == 2
    for preset in ("coop", "vpt_shallow"):  # cached features / images through the prompted image tower
        cfg = build_config([preset], overrides(data, out, "text.n_ctx=4" if preset == "coop" else "vision.n_tokens=2"))
        seed_everything(cfg.seed)
        dataset = prepare_data(cfg)
        model = build_model(cfg, load_backbone(cfg, CPU), dataset)
        sharded = evaluate_model(model, dataset, cfg, CPU, "fp32", progress=False, distributed=distributed)
        single = evaluate_model(model, dataset, cfg, CPU, "fp32", progress=False)
        assert sharded == single and sharded["num_images"] == len(dataset.test) == 15, (preset, sharded, single)

    cfg = build_config(["coop"], overrides(data, out, "text.n_ctx=4"))
    seed_everything(cfg.seed)
    dataset = prepare_data(cfg)
    model = build_model(cfg, load_backbone(cfg, CPU), dataset)
    setup = RunSetup(cfg, CPU, "fp32", out, progress=False, distributed=distributed)
    assert setup.is_main == (distributed.rank == 0)
    (mine, *_), cut_short = epoch_batches(0, len(dataset.train), setup)
    assert len(mine) == distributed.local_batch_size(cfg.train.batch_size) == 2 and not cut_short
    everyone = [None, None]
    dist.all_gather_object(everyone, mine)
    transform = transform_for(model.backbone, train=False)

    def batch(indices):
        items = [dataset.train[i] for i in indices]
        return torch.stack([transform(open_image(i.path)) for i in items]), torch.tensor([i.label for i in items])

    model(*batch(everyone[0] + everyone[1])).loss.backward()  # one process, the whole global batch
    single = [p.grad.clone() for p in model.trainable_parameters()]
    model.zero_grad()
    ddp = distributed.wrap(model)
    ddp(*batch(mine)).loss.backward()  # this process's half; DDP averages the gradients
    for a, b in zip(single, [p.grad for p in model.trainable_parameters()]):
        assert (a - b).abs().max() <= 1e-5 * a.abs().max(), ((a - b).abs().max(), a.abs().max())

    assert main(["train", "-c", "coop", *overrides(data, out, "text.n_ctx=4", f"output.dir={out / 'cli'}")]) == 0


@pytest.mark.slow
def test_torchrun_two_cpu_processes(tmp_path):
    data = coloured_folder(tmp_path / "data")  # 15 test images: the two shards differ in size
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           __file__, str(data), str(tmp_path)], capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    run_dir = tmp_path / "cli"
    result = json.loads((run_dir / "result.json").read_text())
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1 and result["test"]["num_images"] == 15  # only the main process wrote
    from promptclip.engine.runner import evaluate_run

    alone = evaluate_run(run_dir, progress=False, label="one_process")  # the saved prompts, one process
    assert alone["test"]["accuracy"] == result["test"]["accuracy"]
    assert alone["test"]["per_class_accuracy"] == result["test"]["per_class_accuracy"]


if __name__ == "__main__":
    worker(Path(sys.argv[1]), Path(sys.argv[2]))
