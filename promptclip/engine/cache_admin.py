"""The feature cache on disk: its entries, the holds of running processes, the size budget, and ``promptclip cache``.

Entries are ``<cache_dir>/features/<key>.safetensors``; an entry's modification time is when it was last written or
read (a read touches it), so the least recently used entries are the oldest. A process that will read an entry again
holds it: an open descriptor with a shared ``flock``, which the kernel drops when the process ends, so a dead
process protects nothing. Removal takes an exclusive lock without waiting and skips an entry it cannot lock. Few-shot
draws (``<cache_dir>/fewshot``) are never touched: they are tiny and define runs.

Torch-free: entries are described from their safetensors headers, so ``promptclip cache du`` reads no tensors.
"""
from __future__ import annotations

import argparse
import fcntl
import json
import os
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

from ..config import default_cache_dir
from ..errors import PromptclipError

FEATURES = "features"
DRAWS = "fewshot"
SUFFIX = ".safetensors"
GB = 10**9  # budgets are in decimal gigabytes, as `du -H` and disk vendors count
#: a temporary file untouched this long was left by a writer that died: removed by the budget, prune and clear
STALE_TEMPORARY_S = 3600
UNKNOWN = "unknown"  # what du shows for entries written before entries described themselves

#: entry paths this process holds, with how many holds: flock emulated over NFS does not exclude the process itself
_held_here: Counter = Counter()


@dataclass(frozen=True)
class Entry:
    """One file of the features folder: its size in bytes and when it was last written or read."""

    path: Path
    size: int
    used: float


def _files(directory: Path, temporary: bool) -> List[Entry]:
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        is_temporary = name.startswith(".") and name.endswith(".tmp")
        if is_temporary != temporary or not (temporary or name.endswith(SUFFIX)):
            continue
        try:
            stat = os.stat(directory / name)
        except FileNotFoundError:  # removed meanwhile by another process
            continue
        found.append(Entry(directory / name, stat.st_size, stat.st_mtime))
    return found


def entries(directory: Path) -> List[Entry]:
    """The entries of the features folder ``directory``, least recently used first."""
    return sorted(_files(Path(directory), temporary=False), key=lambda e: (e.used, e.path.name))


def stale_temporaries(directory: Path) -> List[Entry]:
    """Temporary files of writes that died (untouched for :data:`STALE_TEMPORARY_S`); live writes' are left alone."""
    now = time.time()
    return [e for e in _files(Path(directory), temporary=True) if now - e.used > STALE_TEMPORARY_S]


def hold(path: Path) -> Optional[int]:
    """Hold the entry at ``path`` (a shared lock on an open descriptor) so no process removes it; its descriptor, or
    None when there is no entry. Release it with :func:`release`."""
    for _ in range(2):  # the path may be replaced by a new write between opening and locking: hold the new file
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        fcntl.flock(fd, fcntl.LOCK_SH)
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:  # removed before the lock was taken
            os.close(fd)
            return None
        if same:
            _held_here[str(path)] += 1
            return fd
        os.close(fd)
    return None


def release(path: Path, fd: int) -> None:
    """Drop a hold taken by :func:`hold`."""
    os.close(fd)
    _held_here[str(path)] -= 1
    if _held_here[str(path)] <= 0:
        del _held_here[str(path)]


def remove_unheld(path: Path) -> Literal["removed", "held", "gone"]:
    """Remove the entry at ``path`` unless a process holds it; "gone" when another process removed it first."""
    if _held_here.get(str(path)):
        return "held"
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return "gone"
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return "held"
        try:
            if os.fstat(fd).st_ino != os.stat(path).st_ino:  # replaced by a fresh write: that one is in use
                return "held"
            os.unlink(path)
        except FileNotFoundError:
            return "gone"
        return "removed"
    finally:
        os.close(fd)


@dataclass
class Pruned:
    """What one pass over the features folder did."""

    removed: int = 0
    freed: int = 0  # bytes
    held: int = 0  # entries that would have gone but are held
    held_bytes: int = 0
    left: int = 0  # bytes of entries left


def enforce_budget(directory: Path, max_bytes: int) -> Pruned:
    """Remove stale temporaries, then least recently used entries until the entries take at most ``max_bytes``;
    held entries are skipped (they may keep the folder above the budget until their holders let go)."""
    result = Pruned()
    for leftover in stale_temporaries(directory):
        if remove_unheld(leftover.path) == "removed":
            result.freed += leftover.size
    listed = entries(directory)
    total = sum(e.size for e in listed)
    for entry in listed:
        if total <= max_bytes:
            break
        outcome = remove_unheld(entry.path)
        if outcome == "held":
            result.held += 1
            result.held_bytes += entry.size
            continue
        total -= entry.size
        if outcome == "removed":
            result.removed += 1
            result.freed += entry.size
    result.left = total
    return result


def entry_metadata(path: Path) -> Dict[str, str]:
    """The metadata of a safetensors file's header (no tensors read); empty when the file is damaged."""
    try:
        with open(path, "rb") as f:
            length = int.from_bytes(f.read(8), "little")
            if not 2 <= length <= 100 * 2**20:
                return {}
            header = json.loads(f.read(length))
    except (OSError, ValueError):
        return {}
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) else {}


def format_size(size: float) -> str:
    """``size`` bytes in decimal units (kB, MB, GB), as the budget counts them."""
    if size < 1000:
        return f"{size:.0f} B"
    for unit in ("kB", "MB"):
        size /= 1000
        if size < 1000:
            return f"{size:.1f} {unit}"
    return f"{size / 1000:.1f} GB"


def usage(cache_dir: Path) -> str:
    """The ``du`` report: entries and size per (backbone, dataset, kind), the total, and the draws beside them."""
    features = Path(cache_dir) / FEATURES
    listed = entries(features)
    groups: Dict[Tuple[str, str, str], List[int]] = defaultdict(lambda: [0, 0])
    for entry in listed:
        meta = entry_metadata(entry.path)
        group = groups[(meta.get("backbone", UNKNOWN), meta.get("dataset", UNKNOWN), meta.get("kind", UNKNOWN))]
        group[0] += 1
        group[1] += entry.size
    lines = [f"Feature cache {features}: {len(listed)} entries, {format_size(sum(e.size for e in listed))}"]
    if groups:
        rows = [("backbone", "dataset", "kind", "entries", "size")]
        rows += [(*key, str(n), format_size(size)) for key, (n, size) in sorted(groups.items())]
        widths = [max(len(row[i]) for row in rows) for i in range(5)]
        lines += ["  " + "  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                                   for i, (cell, w) in enumerate(zip(row, widths))).rstrip() for row in rows]
    leftovers = stale_temporaries(features)
    if leftovers:
        lines.append(f"Left by writes that died: {len(leftovers)} temporary files, "
                     f"{format_size(sum(e.size for e in leftovers))} (prune and clear remove them)")
    draws = [p for p in (Path(cache_dir) / DRAWS).rglob("*.json") if p.is_file()]
    lines.append(f"Few-shot draws {Path(cache_dir) / DRAWS}: {len(draws)} files, "
                 f"{format_size(sum(p.stat().st_size for p in draws))} (never pruned or cleared)")
    return "\n".join(lines)


def _held_note(result: Pruned) -> str:
    return (f"; {result.held} entries ({format_size(result.held_bytes)}) held by running processes were kept"
            if result.held else "")


def prune(cache_dir: Path, max_gb: float) -> str:
    """Apply the budget now; a one-line summary."""
    result = enforce_budget(Path(cache_dir) / FEATURES, int(max_gb * GB))
    return (f"Removed {result.removed} least recently used entries ({format_size(result.freed)}){_held_note(result)}; "
            f"the feature cache now takes {format_size(result.left)} (budget {max_gb:g} GB).")


def clear(cache_dir: Path) -> str:
    """Remove every feature entry not held by a running process (and stale temporaries); draws stay."""
    features = Path(cache_dir) / FEATURES
    result = Pruned()
    for leftover in stale_temporaries(features):
        if remove_unheld(leftover.path) == "removed":
            result.freed += leftover.size
    for entry in entries(features):
        outcome = remove_unheld(entry.path)
        if outcome == "removed":
            result.removed += 1
            result.freed += entry.size
        elif outcome == "held":
            result.held += 1
            result.held_bytes += entry.size
    return f"Removed {result.removed} feature entries ({format_size(result.freed)}){_held_note(result)}."


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a size in GB above 0, got {text!r}")
    return value


def run_cache_command(args: argparse.Namespace) -> int:
    """Handler of ``promptclip cache``: 0 when done, 1 when ``clear`` was not confirmed."""
    cache_dir = Path(args.cache_dir or default_cache_dir()).expanduser()
    if cache_dir.exists() and not cache_dir.is_dir():
        raise PromptclipError(f"The cache folder {cache_dir} is a file; pass --cache-dir with the folder that holds "
                              f"features/ and fewshot/.")
    if args.cache_command == "du":
        print(usage(cache_dir))
        return 0
    if args.cache_command == "prune":
        print(prune(cache_dir, args.max_gb))
        return 0
    listed = entries(cache_dir / FEATURES)
    if not args.yes:
        question = (f"Remove the {len(listed)} feature entries ({format_size(sum(e.size for e in listed))}) under "
                    f"{cache_dir / FEATURES}? Few-shot draws are kept. [y/N] ")
        try:
            answer = input(question)
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            print("Nothing removed (pass --yes to clear without asking).", file=sys.stderr)
            return 1
    print(clear(cache_dir))
    return 0


def add_cache_command(subparsers) -> argparse.ArgumentParser:
    """Add ``cache du|prune|clear`` to an argparse subparsers object; the handler is in ``args.func``."""
    cache = subparsers.add_parser(
        "cache", help="show, prune or clear the feature cache", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="The feature cache (<cache dir>/features): frozen image features reused across runs. du shows "
                    "its size per backbone, dataset and kind; prune removes least recently used entries down to a "
                    "budget; clear removes them all. Entries held by running processes are kept; few-shot draws "
                    "(<cache dir>/fewshot) are never removed.\n\nexamples:\n  promptclip cache du\n"
                    "  promptclip cache prune --max-gb 20")
    commands = cache.add_subparsers(dest="cache_command", metavar="{du,prune,clear}", required=True)
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument("--cache-dir", metavar="DIR",
                       help="the cache folder (default: output.cache_dir's default, $PROMPTCLIP_CACHE else "
                            "~/.cache/promptclip)")
    commands.add_parser("du", parents=[where], help="entries and size per backbone, dataset and kind",
                        description="Entries and size of the feature cache per backbone, dataset (the images' "
                                    "folder) and kind (test-transform or training view); entries written before "
                                    "promptclip recorded these show as 'unknown'.")
    prune_parser = commands.add_parser(
        "prune", parents=[where], help="remove least recently used entries down to a budget",
        description="Remove least recently used entries (by last read or write) until the feature cache takes at "
                    "most --max-gb, as output.cache_max_gb does after each write.")
    prune_parser.add_argument("--max-gb", type=_positive, required=True, metavar="X",
                              help="the budget in GB (10^9 bytes)")
    clear_parser = commands.add_parser("clear", parents=[where], help="remove every feature entry",
                                       description="Remove every feature entry (not the few-shot draws); asks "
                                                   "first unless --yes.")
    clear_parser.add_argument("--yes", action="store_true", help="do not ask for confirmation")
    cache.set_defaults(func=run_cache_command)
    return cache
