"""One run across several GPUs or CPU processes under torchrun: DDP training, exact sharded evaluation.

    torchrun --nproc_per_node 4 -m promptclip train -c coop data.name=ImageNet data.root=/data

Every process reads the same config and draws the same few-shot split. Training wraps the composed model in
``DistributedDataParallel`` (gloo on CPU, nccl on GPU) without buffer syncing (``broadcast_buffers=False``, or its
successor ``forward_sync_buffers=False`` on torch ≥ 2.14): the frozen backbone's buffers are never re-sent, and only
the prompts' gradients are averaged. ``train.batch_size`` stays the global batch: each of N processes takes
``batch_size / N`` images per step, so a step's gradient equals the single-process one. Evaluation
gives process r the test items ``r, r+N, r+2N, …`` and gathers the predictions: every image is counted exactly once,
with no padding duplicates. Only the main process writes files. Logged training loss and accuracy are the main
process's share of each epoch.
"""
from __future__ import annotations

import inspect
import os
from typing import List, Optional, Sequence, TypeVar

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler

from ..errors import ConfigError
from .trainer import epoch_seed

T = TypeVar("T")
#: buffers are not re-sent before every forward (torch 2.14 renamed broadcast_buffers to forward_sync_buffers)
NO_BUFFER_SYNC = ({"forward_sync_buffers": False}
                  if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
                  else {"broadcast_buffers": False})


class Distributed:
    """What :func:`promptclip.engine.runner.run` needs to run as one process of several."""

    def __init__(self, rank: int, world_size: int, device: torch.device):
        self.rank = rank
        self.world_size = world_size
        self.device = device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @staticmethod
    def launched() -> bool:
        """Whether this process was started by torchrun (which describes the process group in the environment)."""
        return "RANK" in os.environ and "WORLD_SIZE" in os.environ

    @classmethod
    def from_env(cls) -> Optional["Distributed"]:
        """Join the process group torchrun describes in the environment; None when not under torchrun."""
        if not cls.launched():
            return None
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        if torch.cuda.is_available():
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
            backend = "nccl"
        else:
            device, backend = torch.device("cpu"), "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend, rank=rank, world_size=world_size)
        return cls(rank, world_size, device)

    def close(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()

    def share(self, obj: T) -> T:
        """The main process's ``obj`` on every process (a decision only the main process may take)."""
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    # ---------------------------------------------------------------------------------------------- training
    def local_batch_size(self, batch_size: int) -> int:
        if batch_size % self.world_size:
            raise ConfigError(f"train.batch_size={batch_size} is the global batch and must be divisible by the "
                              f"{self.world_size} processes; change it or the number of processes.")
        return batch_size // self.world_size

    def sampler(self, num_items: int, seed: int, epoch: int) -> DistributedSampler:
        """This process's share of a shuffle that depends only on (seed, epoch), like the single-process one."""
        return DistributedSampler(range(num_items), num_replicas=self.world_size, rank=self.rank, shuffle=True,
                                  seed=epoch_seed(seed, epoch), drop_last=False)

    def wrap(self, model: torch.nn.Module) -> DistributedDataParallel:
        """DDP around the composed model: gradients of the prompts are averaged, frozen buffers never broadcast.
        ``find_unused_parameters`` lets a learner leave some prompts out of a step."""
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=True, **NO_BUFFER_SYNC)

    # -------------------------------------------------------------------------------------------- evaluation
    def shard(self, items: Sequence[T]) -> List[T]:
        """Items ``rank, rank + N, …``: the shards cover every item exactly once."""
        return list(items[self.rank::self.world_size])

    def gather(self, *tensors: torch.Tensor) -> List[torch.Tensor]:
        """Each tensor concatenated over all processes (every process gets the whole)."""
        parts: list = [None] * self.world_size
        dist.all_gather_object(parts, [t.cpu() for t in tensors])
        return [torch.cat([p[i] for p in parts]) for i in range(len(tensors))]
