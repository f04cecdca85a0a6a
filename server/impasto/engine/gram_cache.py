"""Style Gram matrices kept between jobs, in memory and on disk.

A style's targets depend on its pixels, the weight set, pooling, layers, the size it is resized to
and the precision of the convolutions; all of these are in the key, so a changed image or setting
never meets a stale entry. Both tiers are bounded; the least recently used entries go first.
"""

from __future__ import annotations

import collections
import hashlib
import os
import threading
from pathlib import Path

import torch

from ..files import write_cache_file

Grams = dict[str, torch.Tensor]


def image_digest(image: torch.Tensor) -> str:
    return hashlib.sha256(image.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


class GramCache:
    def __init__(
        self, directory: Path | None, max_disk_bytes: int = 1 << 30, max_memory_bytes: int = 256 << 20
    ):
        self.directory = directory
        self.max_disk_bytes = max_disk_bytes
        self.max_memory_bytes = max_memory_bytes
        self._memory: collections.OrderedDict[str, Grams] = collections.OrderedDict()
        self._memory_bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    @staticmethod
    def key(*parts: object) -> str:
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:40]

    def get(self, key: str) -> Grams | None:
        with self._lock:
            if key in self._memory:
                self._memory.move_to_end(key)
                self.hits += 1
                return self._memory[key]
        grams = self._read(key)
        with self._lock:
            if grams is None:
                self.misses += 1
                return None
            self.hits += 1
            self._remember(key, grams)
        return grams

    def put(self, key: str, grams: Grams) -> None:
        grams = {name: gram.detach().to("cpu", torch.float32) for name, gram in grams.items()}
        with self._lock:
            self._remember(key, grams)
        self._write(key, grams)

    def _remember(self, key: str, grams: Grams) -> None:
        if key not in self._memory:
            self._memory_bytes += _size(grams)
        self._memory[key] = grams
        while self._memory_bytes > self.max_memory_bytes and len(self._memory) > 1:
            _, dropped = self._memory.popitem(last=False)
            self._memory_bytes -= _size(dropped)

    def _path(self, key: str) -> Path | None:
        return None if self.directory is None else self.directory / f"{key}.pt"

    def _read(self, key: str) -> Grams | None:
        path = self._path(key)
        if path is None or not path.is_file():
            return None
        try:
            grams = torch.load(path, map_location="cpu", weights_only=True)
            os.utime(path)  # recently used: evicted last
            return grams
        except Exception:  # noqa: BLE001 - a damaged entry is only a miss
            path.unlink(missing_ok=True)
            return None

    def _write(self, key: str, grams: Grams) -> None:
        path = self._path(key)
        if path is None:
            return
        # A read-only or full disk only costs recomputing.
        if write_cache_file(path, lambda file: torch.save(grams, file)):
            self._trim_disk()

    def _trim_disk(self) -> None:
        entries = sorted(self.directory.glob("*.pt"), key=lambda p: p.stat().st_mtime)
        total = sum(p.stat().st_size for p in entries)
        for path in entries:
            if total <= self.max_disk_bytes:
                break
            total -= path.stat().st_size
            path.unlink(missing_ok=True)


def _size(grams: Grams) -> int:
    return sum(g.numel() * g.element_size() for g in grams.values())
