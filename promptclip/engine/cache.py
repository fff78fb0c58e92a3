"""Feature cache: frozen image features computed once and reused across seeds, shots and methods.

Whatever does not prompt the image tower (zero-shot, CoOp, CoCoOp, KgCoOp, the linear probe, DAPT's prototypes,
PromptSRC's frozen image term) sees the same image features for the same images, so they are stored under ``<output.cache_dir>/features/<key>.safetensors``. The
key is a checksum of everything that produced them: the model (name, widths, weights: pretrained tag, checkpoint file
size and mtime, or a hash of the parameters for random or hub weights), the transform signature, the precision, and
every item's path, label, file size and mtime. A changed backbone, transform or image gives another key, so a stale
entry is never read. Each entry also stores a SHA-256 of its tensors' bytes, checked on every read (hashing is cheap
beside the tower): a file damaged on disk with its header intact is recomputed, with a warning, never used.

Only deterministic features are cached: the test transform; a training *view*, whose every crop and flip is seeded
by (run seed, view, image path) (:class:`TrainingViews`: the key is the view, not the method, so every method that
reads the frozen tower on its training images shares it).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import weakref
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..backbone import FrozenCLIP, normalize
from ..data.base import Item
from ..data.loaders import eval_loader, image_loader, transform_for, transform_signature, view_index, view_seeds
from ..utils import atomic_write_bytes
from .precision import autocast

log = logging.getLogger("promptclip")
CACHE_VERSION = 2  # 2: entries carry a checksum of their contents
VIEW_RULE = 1  # how a view seeds its items (data.loaders.view_seeds); part of a view's key
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


def content_checksum(features: torch.Tensor, labels: torch.Tensor) -> str:
    """SHA-256 of the stored tensors' bytes (float32 features, int64 labels), stored with an entry, checked on read."""
    h = hashlib.sha256()
    for tensor in (features, labels):
        h.update(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


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
                metadata = f.metadata() or {}
                if metadata.get("key") != key:
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
        if features.dtype != torch.float32 or labels.dtype != torch.int64 \
                or metadata.get("checksum") != content_checksum(features, labels):
            log.warning("Feature cache file %s does not match the checksum stored with it (damaged on disk); "
                        "computing the features again.", path)
            return None
        return features, labels

    def save(self, key: str, features: torch.Tensor, labels: torch.Tensor, note: str) -> None:
        features, labels = features.float().cpu().contiguous(), labels.long().cpu().contiguous()
        data = save_safetensors({"features": features, "labels": labels},
                                metadata={"key": key, "note": note, "checksum": content_checksum(features, labels)})
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


class TrainingViews:
    """Frozen features of the training items' views, one view per epoch (``views`` > 0: ``epoch mod views``): the
    inputs of methods that do not prompt the image tower, the frozen side of losses that compare with it (PromptSRC),
    and view 0 for prototypes (DAPT). Without ``augment`` every view is the test-transform one.

    ``cache_dir`` None computes the same features without storing them. Features are encoded in item order in chunks
    of ``batch_size``; under DDP (``distributed``) the processes encode alternate chunks and share them.
    """

    def __init__(self, backbone: FrozenCLIP, items: Sequence[Item], seed: int, views: int, augment: bool,
                 batch_size: int, num_workers: int, device: torch.device, precision: str,
                 cache_dir: Optional[os.PathLike] = None, progress: bool = True, distributed=None):
        self.backbone, self.items, self.seed, self.views, self.augment = backbone, list(items), seed, views, augment
        self.batch_size, self.num_workers, self.device, self.precision = batch_size, num_workers, device, precision
        self.cache = FeatureCache(cache_dir) if cache_dir is not None else None
        self.progress, self.distributed = progress, distributed
        self.transform = transform_for(backbone, train=augment)
        self.last: Optional[Tuple[str, Features]] = None  # the latest view (without augment, every epoch's)

    def key(self, view: int) -> str:
        if not self.augment:  # the one deterministic view: the key of frozen_features (shared with the linear probe)
            return feature_key(self.backbone, self.items, transform_signature(self.backbone, train=False),
                               self.precision)
        signature = f"{transform_signature(self.backbone, train=True)}-views{VIEW_RULE}-seed-{self.seed}-view-{view}"
        return feature_key(self.backbone, self.items, signature, self.precision)

    def features(self, epoch: int, indices: Optional[Sequence[int]] = None) -> Features:
        """Features ``[N, E]`` and labels ``[N]`` of every item under ``epoch``'s view. With ``indices`` (an epoch cut
        short by ``train.max_steps_per_epoch``) only those rows are encoded, by this process and not cached; the
        other rows are zero."""
        view = view_index(epoch, self.views)
        if indices is not None:
            rows = sorted(indices)
            part, _ = self._encode(view, [rows[i:i + self.batch_size] for i in range(0, len(rows), self.batch_size)])
            features = torch.zeros(len(self.items), part.shape[1])
            features[rows] = part
            return features, torch.tensor([item.label for item in self.items])
        key = self.key(view)
        if self.last is not None and self.last[0] == key:
            return self.last[1]
        found = self.cache.load(key, self.items) if self.cache is not None else None
        if self.distributed is not None and self.cache is not None:  # encode together unless every process has it
            found = found if bool(self.distributed.gather(torch.tensor([found is not None]))[0].all()) else None
        if found is not None:
            log.debug("Feature cache hit %s (view %d).", key, view)
            self.last = key, found
            return found
        chunks = [list(range(i, min(i + self.batch_size, len(self.items))))
                  for i in range(0, len(self.items), self.batch_size)]
        rank, world = (self.distributed.rank, self.distributed.world_size) if self.distributed else (0, 1)
        features, labels = self._encode(view, chunks[rank::world])
        if self.distributed is not None:
            order = torch.tensor([i for chunk in chunks[rank::world] for i in chunk], dtype=torch.long)
            gathered, gathered_labels, order = self.distributed.gather(features, labels, order)
            features, labels = torch.empty_like(gathered), torch.empty_like(gathered_labels)
            features[order], labels[order] = gathered, gathered_labels
        if self.cache is not None and (self.distributed is None or self.distributed.is_main):
            self.cache.save(key, features, labels, note=f"{self.backbone.name} view {view} of {len(self.items)} items")
        self.last = key, (features, labels)
        return features, labels

    def _encode(self, view: int, batches: List[List[int]]) -> Features:
        if not batches:  # more processes than chunks
            return torch.zeros(0, self.backbone.embed_dim), torch.zeros(0, dtype=torch.long)
        seeds = view_seeds(self.items, self.seed, view) if self.augment else None
        loader = image_loader(self.items, self.transform, batches, self.num_workers, seeds)
        return encode_loader(self.backbone, loader, self.device, self.precision, f"view {view} features",
                             self.progress)
