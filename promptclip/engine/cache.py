"""Feature cache: frozen image features computed once and reused across seeds, shots and methods.

Whatever does not prompt the image tower (zero-shot, CoOp, CoCoOp, KgCoOp, the linear probe, DAPT's prototypes,
PromptSRC's frozen image term) sees the same image features for the same images, so they are stored under
``<output.cache_dir>/features/<key>.safetensors``. The key is a checksum of everything that produced them: the model
(name, widths, weights: pretrained tag, checkpoint file size and mtime, or a hash of the parameters for random or hub
weights), the transform signature, the precision, and every item's path, label, file size and mtime. A changed
backbone, transform or image gives another key, so a stale entry is never read. Each entry also stores a SHA-256 of
its tensors' bytes, checked on every read (hashing is cheap beside the tower): a file damaged on disk with its header
intact is recomputed, with a warning, never used.

Only deterministic features are cached: the test transform; a training *view*, whose every crop and flip is seeded
by (run seed, view, image path) (:class:`TrainingViews`: the key is the view, not the method, so every method that
reads the frozen tower on its training images shares it).

``output.cache_max_gb`` bounds ``features/``: after each write the least recently used entries (a read touches an
entry) are removed until it fits, except entries a running process holds (:mod:`.cache_admin`), and a line is
logged. A full disk while writing (ENOSPC, EDQUOT, EFBIG) stops caching for the rest of the process with one warning;
the run goes on with the features it computed, so results do not change.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import weakref
from pathlib import Path
from typing import Callable, Dict, List, Mapping, Optional, Sequence, Set, Tuple

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as save_safetensors
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from ..backbone import FrozenCLIP, normalize
from ..data.base import Item
from ..data.loaders import eval_loader, image_loader, transform_for, transform_signature, view_index, view_seeds
from ..utils import atomic_write_bytes
from .cache_admin import FEATURES, GB, enforce_budget, format_size, hold, release
from .precision import autocast

log = logging.getLogger("promptclip")
CACHE_VERSION = 2  # 2: entries carry a checksum of their contents
VIEW_RULE = 1  # how a view seeds its items (data.loaders.view_seeds); part of a view's key
Features = Tuple[torch.Tensor, torch.Tensor]  # ([N, E] normalised float32 features, [N] labels), item order
TEST_TRANSFORM, TRAINING_VIEW = "test-transform", "training view"  # an entry's kind, shown by `promptclip cache du`
DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_disk_full = False  # set by the first full-disk error: this process writes no further entries

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


def describe(backbone: FrozenCLIP, items: Sequence[Item], kind: str) -> Dict[str, str]:
    """What `promptclip cache du` groups an entry by: the backbone, the images' common folder, the kind."""
    folders = {os.path.dirname(item.path) for item in items}
    dataset = os.path.commonpath(sorted(folders)) if folders else ""
    tag = f" ({backbone.pretrained})" if backbone.pretrained else ""
    return {"backbone": f"{backbone.name}{tag}", "dataset": dataset, "kind": kind, "items": str(len(items))}


def _release_all(held: Dict[Path, int]) -> None:
    for path, fd in held.items():
        release(path, fd)
    held.clear()


class FeatureCache:
    """Content-addressed safetensors files of (features, labels) under ``directory/features``, bounded by ``max_gb``
    (None: no bound). The entries it reads or writes stay held (not removable by any process's budget) until
    :meth:`release`, or until the object is garbage-collected."""

    def __init__(self, directory: os.PathLike, max_gb: Optional[float] = None):
        self.directory = Path(directory) / FEATURES
        self.max_gb = max_gb
        self.held: Dict[Path, int] = {}  # entry path -> descriptor holding its shared lock
        weakref.finalize(self, _release_all, self.held)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.safetensors"

    def hold(self, key: str) -> bool:
        """Hold ``key``'s entry; False when there is none."""
        path = self.path(key)
        if path not in self.held:
            fd = hold(path)
            if fd is None:
                return False
            self.held[path] = fd
        return True

    def release(self, key: Optional[str] = None) -> None:
        """Let go of ``key``'s entry (every entry without ``key``), so budgets may remove it."""
        if key is None:
            _release_all(self.held)
        elif self.path(key) in self.held:
            release(self.path(key), self.held.pop(self.path(key)))

    def keep_only(self, keys: Set[str]) -> None:
        """Let go of every held entry but those of ``keys``."""
        keep = {self.path(key) for key in keys}
        for path in [p for p in self.held if p not in keep]:
            release(path, self.held.pop(path))

    def load(self, key: str, items: Sequence[Item]) -> Optional[Features]:
        """The stored features for ``key``, held and touched (now its most recent use), or None (absent, or not
        matching ``items``: recomputed)."""
        if not self.hold(key):
            return None
        found = self._read(key, items)
        if found is None:
            self.release(key)
            return None
        try:
            os.utime(self.path(key))
        except OSError:  # another user's entry in a shared cache: its age stays that of its last write
            pass
        return found

    def _read(self, key: str, items: Sequence[Item]) -> Optional[Features]:
        path = self.path(key)
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

    def save(self, key: str, features: torch.Tensor, labels: torch.Tensor, note: str,
             about: Optional[Mapping[str, str]] = None) -> None:
        """Store (and hold) an entry, ``about`` (:func:`describe`) in its metadata, then apply the budget. After a
        full-disk error this process stores nothing more: one warning, and the caller keeps what it computed."""
        global _disk_full
        if _disk_full:
            return
        features, labels = features.float().cpu().contiguous(), labels.long().cpu().contiguous()
        metadata = {**(about or {}), "key": key, "note": note, "checksum": content_checksum(features, labels)}
        data = save_safetensors({"features": features, "labels": labels}, metadata=metadata)
        self.release(key)  # a hold on a file this write replaces protects nothing
        try:
            atomic_write_bytes(self.path(key), data)
        except OSError as err:
            if err.errno not in DISK_FULL:
                raise
            _disk_full = True
            log.warning("The feature cache in %s is full (%s): this process caches no more features and goes on with "
                        "the ones it computes (the same results). Free space with `promptclip cache prune --max-gb X` "
                        "or `clear`, set output.cache_max_gb, or point output.cache_dir elsewhere.",
                        self.directory, os.strerror(err.errno))
            return
        self.hold(key)
        if self.max_gb is not None:
            self.apply_budget()

    def apply_budget(self) -> None:
        """Remove least recently used entries until ``features/`` fits ``max_gb``; one log line when some went."""
        result = enforce_budget(self.directory, int(self.max_gb * GB))
        if result.removed:
            kept = (f"; {result.held} held by running processes kept ({format_size(result.held_bytes)})"
                    if result.held else "")
            log.info("Feature cache over its %g GB budget: removed %d least recently used entries (%s)%s; "
                     "%s left.", self.max_gb, result.removed, format_size(result.freed), kept,
                     format_size(result.left))

    def get(self, key: str, items: Sequence[Item], compute: Callable[[], Features], note: str = "",
            about: Optional[Mapping[str, str]] = None) -> Features:
        """Stored features for ``key``, computing and storing them first if needed."""
        found = self.load(key, items)
        if found is not None:
            log.debug("Feature cache hit %s (%s).", key, note)
            return found
        features, labels = compute()
        self.save(key, features, labels, note, about)
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
                    progress: bool = True, *, max_gb: Optional[float] = None) -> Features:
    """Frozen features of ``items`` under the deterministic test transform, through the cache (bounded by
    ``max_gb``: ``output.cache_max_gb``); the entry is held only during the call."""
    key = feature_key(backbone, items, transform_signature(backbone, train=False), precision)

    def compute() -> Features:
        loader = eval_loader(items, transform_for(backbone, train=False), batch_size, num_workers)
        return encode_loader(backbone, loader, device, precision, desc, progress)

    cache = FeatureCache(cache_dir, max_gb)
    try:
        return cache.get(key, items, compute, note=f"{backbone.name} test-transform {len(items)} items",
                         about=describe(backbone, items, TEST_TRANSFORM))
    finally:
        cache.release()


def feature_loader(features: torch.Tensor, labels: torch.Tensor, batch_size: int) -> DataLoader:
    """Batches of (features, labels) for ``predict_loader(..., image_features=identity)``."""
    return DataLoader(TensorDataset(features, labels), batch_size=batch_size, shuffle=False)


class TrainingViews:
    """Frozen features of the training items' views, one view per epoch (``views`` > 0: ``epoch mod views``): the
    inputs of methods that do not prompt the image tower, the frozen side of losses that compare with it (PromptSRC),
    and view 0 for prototypes (DAPT). Without ``augment`` every view is the test-transform one.

    ``cache_dir`` None computes the same features without storing them; ``max_gb`` (``output.cache_max_gb``) bounds
    the cache. The views it will read again stay held while it lives: view 0 (prototypes) and, with ``views`` > 0,
    every view; with a fresh view per epoch, the current one. Features are encoded in item order in chunks
    of ``batch_size``; under DDP (``distributed``) the processes encode alternate chunks and share them.
    """

    def __init__(self, backbone: FrozenCLIP, items: Sequence[Item], seed: int, views: int, augment: bool,
                 batch_size: int, num_workers: int, device: torch.device, precision: str,
                 cache_dir: Optional[os.PathLike] = None, progress: bool = True, distributed=None, *,
                 max_gb: Optional[float] = None):
        self.backbone, self.items, self.seed, self.views, self.augment = backbone, list(items), seed, views, augment
        self.batch_size, self.num_workers, self.device, self.precision = batch_size, num_workers, device, precision
        self.cache = FeatureCache(cache_dir, max_gb) if cache_dir is not None else None
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
            self._keep_only_needed(view)
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
            kind = TRAINING_VIEW if self.augment else TEST_TRANSFORM
            self.cache.save(key, features, labels, note=f"{self.backbone.name} view {view} of {len(self.items)} items",
                            about=describe(self.backbone, self.items, kind))
            self._keep_only_needed(view)
        self.last = key, (features, labels)
        return features, labels

    def _keep_only_needed(self, view: int) -> None:
        """With a fresh view per epoch, release the views read for the last time (all but view 0 and ``view``)."""
        if self.augment and not self.views:
            self.cache.keep_only({self.key(0), self.key(view)})

    def _encode(self, view: int, batches: List[List[int]]) -> Features:
        if not batches:  # more processes than chunks
            return torch.zeros(0, self.backbone.embed_dim), torch.zeros(0, dtype=torch.long)
        seeds = view_seeds(self.items, self.seed, view) if self.augment else None
        loader = image_loader(self.items, self.transform, batches, self.num_workers, seeds)
        return encode_loader(self.backbone, loader, self.device, self.precision, f"view {view} features",
                             self.progress)
