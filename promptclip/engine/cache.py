"""Feature cache: frozen image features computed once and reused across seeds, shots and methods.

Whatever does not prompt the image tower (zero-shot, CoOp, CoCoOp, the linear probe, DAPT's prototypes) sees the same
image features for the same images, so they are stored under ``<output.cache_dir>/features/<key>.safetensors``. The
key is a checksum of everything that produced them: the model (name, widths, weights: pretrained tag, checkpoint file
size and mtime, or a hash of the parameters for random or hub weights), the transform signature, the precision, and
every item's path, label, file size and mtime. A changed backbone, transform or image gives another key, so a stale
entry is never read.

Only deterministic features are cached: the test transform, or one seeded pass with the training transform where a
single pass is the definition (DAPT's prototypes).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from pathlib import Path
from typing import Callable, Optional, Sequence, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..backbone import FrozenCLIP, normalize
from ..data.base import Item
from ..data.loaders import eval_loader, transform_for, transform_signature
from ..utils import atomic_write_bytes
from .precision import autocast

log = logging.getLogger("promptclip")
CACHE_VERSION = 1
Features = Tuple[torch.Tensor, torch.Tensor]  # ([N, E] normalised float32 features, [N] labels), item order

_parameter_digests: "weakref.WeakKeyDictionary[FrozenCLIP, str]" = weakref.WeakKeyDictionary()


def weights_id(backbone: FrozenCLIP) -> str:
    """What identifies the backbone's weights: its pretrained tag, its checkpoint file, or a parameter hash."""
    tag = backbone.pretrained
    if tag and os.path.isfile(os.path.expanduser(tag)):
        path = os.path.abspath(os.path.expanduser(tag))
        stat = os.stat(path)
        return f"file:{path}:{stat.st_size}:{stat.st_mtime_ns}"
    if tag:
        return f"tag:{tag}"
    if backbone not in _parameter_digests:  # random (tiny) or hub/local-dir weights: hash them once per object
        h = hashlib.sha256()
        for name, tensor in backbone.model.state_dict().items():
            h.update(name.encode())
            h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        _parameter_digests[backbone] = "sha256:" + h.hexdigest()
    return _parameter_digests[backbone]


def feature_key(backbone: FrozenCLIP, items: Sequence[Item], transform: str, precision: str) -> str:
    """Checksum of what produced a set of features (see the module docstring)."""
    h = hashlib.sha256()
    head = {"version": CACHE_VERSION, "backbone": backbone.describe(), "weights": weights_id(backbone),
            "transform": transform, "precision": precision}
    h.update(json.dumps(head, sort_keys=True).encode())
    for item in items:
        stat = os.stat(item.path)
        h.update(f"{item.path}\t{item.label}\t{stat.st_size}\t{stat.st_mtime_ns}\n".encode())
    return h.hexdigest()[:32]


class FeatureCache:
    """Content-addressed safetensors files of (features, labels) under ``directory/features``."""

    def __init__(self, directory: os.PathLike):
        self.directory = Path(directory) / "features"

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def load(self, key: str, items: Sequence[Item]) -> Optional[Features]:
        """The stored features for ``key``, or None (absent, or not matching ``items``: recomputed)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                if (f.metadata() or {}).get("key") != key:
                    return None
                features, labels = f.get_tensor("features"), f.get_tensor("labels")
        except (SafetensorError, OSError) as err:
            log.warning("Feature cache file %s is unreadable (%s); computing the features again.", path, err)
            return None
        if features.dim() != 2 or labels.dim() != 1 or len(features) != len(labels):
            log.warning("Feature cache file %s holds tensors of the wrong shape; computing the features again.", path)
            return None
        if len(labels) != len(items) or labels.tolist() != [i.label for i in items]:
            return None
        return features, labels

    def save(self, key: str, features: torch.Tensor, labels: torch.Tensor, note: str) -> None:
        data = save_safetensors({"features": features.float().cpu().contiguous(), "labels": labels.long().cpu()},
                                metadata={"key": key, "note": note})
        atomic_write_bytes(self.path(key), data)

    def get(self, key: str, items: Sequence[Item], compute: Callable[[], Features], note: str = "") -> Features:
        """Stored features for ``key``, computing and storing them first if needed."""
        found = self.load(key, items)
        if found is not None:
            log.debug("Feature cache hit %s (%s).", key, note)
            return found
        features, labels = compute()
        self.save(key, features, labels, note)
        return features.float().cpu(), labels.long().cpu()


@torch.no_grad()
def encode_loader(backbone: FrozenCLIP, loader, device: torch.device, precision: str, desc: str = "features",
                  progress: bool = True) -> Features:
    """Normalised frozen image features (no prompts) and labels of every batch of ``loader``, in order."""
    features, labels = [], []
    with autocast(device, precision):
        for images, targets in tqdm(loader, desc=desc, leave=False, disable=not progress):
            features.append(normalize(backbone.encode_image(images.to(device))).float().cpu())
            labels.append(targets)
    return torch.cat(features), torch.cat(labels).long()


def frozen_features(backbone: FrozenCLIP, items: Sequence[Item], cache_dir: os.PathLike, batch_size: int,
                  num_workers: int, device: torch.device, precision: str, desc: str = "features",
                  progress: bool = True) -> Features:
    """Frozen features of ``items`` under the deterministic test transform, through the cache."""
    key = feature_key(backbone, items, transform_signature(backbone, train=False), precision)

    def compute() -> Features:
        loader = eval_loader(items, transform_for(backbone, train=False), batch_size, num_workers)
        return encode_loader(backbone, loader, device, precision, desc, progress)

    return FeatureCache(cache_dir).get(key, items, compute, note=f"{backbone.name} test-transform {len(items)} items")


def feature_loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int) -> DataLoader:
    """Batches of (features, labels) for ``predict_loader(..., image_features=identity)``."""
    return DataLoader(TensorDataset(features, labels), batch_size=batch_size, shuffle=False)


def single_pass_features(backbone: FrozenCLIP, cache_dir: os.PathLike, seed: int, device: torch.device,
                         precision: str, progress: bool = True) -> Callable[[DataLoader], Features]:
    """The ``PrepareContext.image_features`` hook: one pass of a training-transform loader, seeded by ``seed`` so
    it is deterministic (DAPT's prototypes), through the cache."""

    def image_features(loader: DataLoader) -> Features:
        items = loader.dataset.items
        signature = f"{transform_signature(backbone, train=True)}-single-pass-seed-{seed}-batch-{loader.batch_size}-" \
                    f"workers-{loader.num_workers}"
        key = feature_key(backbone, items, signature, precision)

        def compute() -> Features:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return encode_loader(backbone, loader, device, precision, "prototype features", progress)

        return FeatureCache(cache_dir).get(key, items, compute, note=f"{backbone.name} one training-transform pass")

    return image_features
