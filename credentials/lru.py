"""A thread-safe map bounded in entries and in accounted bytes (every credentials cache)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["BoundedLRU", "MiB"]

MiB = 1024 * 1024

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """A thread-safe map bounded in entries and in accounted bytes, least recently used out.

    ``put`` takes the entry's size in bytes (approximate; at least 1). Every method
    holds the lock for a few dict operations only. ``on_evict(key, value)`` is called,
    outside the lock, for every value that leaves: evicted, replaced, popped or cleared.
    """

    def __init__(
        self, max_entries: int, max_bytes: int,
        on_evict: Callable[[K, V], object] | None = None,
    ) -> None:  # fmt: skip
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a cache needs room for at least one entry and one byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def _gone(self, left: list[tuple[K, V]]) -> None:
        if self._on_evict is not None:
            for key, value in left:
                self._on_evict(key, value)

    def get(self, key: K) -> V | None:
        """The value, now the most recently used; None if absent."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def peek(self, key: K) -> V | None:
        """The value without touching its place in the LRU order."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[0]

    def put(self, key: K, value: V, size: int) -> bool:
        """Store (or replace) ``key``; evict from the LRU end until both bounds hold.

        False (and ``key`` absent) if ``size`` alone exceeds ``max_bytes``.
        """
        size = max(int(size), 1)
        left: list[tuple[K, V]] = []
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._nbytes -= old[1]
                if old[0] is not value:
                    left.append((key, old[0]))
            stored = size <= self.max_bytes
            if stored:
                self._items[key] = (value, size)
                self._nbytes += size
                while len(self._items) > self.max_entries or self._nbytes > self.max_bytes:
                    gone, (dropped, dropped_size) = self._items.popitem(last=False)
                    self._nbytes -= dropped_size
                    left.append((gone, dropped))
        self._gone(left)
        return stored

    def pop(self, key: K, only_if: Callable[[V], bool] | None = None) -> None:
        """Drop ``key``; with ``only_if``, only while its value passes that test."""
        with self._lock:
            item = self._items.get(key)
            if item is None or (only_if is not None and not only_if(item[0])):
                return
            del self._items[key]
            self._nbytes -= item[1]
        self._gone([(key, item[0])])

    def keys(self) -> list[K]:
        """A snapshot, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            left = [(key, item[0]) for key, item in self._items.items()]
            self._items.clear()
            self._nbytes = 0
        self._gone(left)

    @property
    def nbytes(self) -> int:
        """The accounted bytes of all entries (never above ``max_bytes``)."""
        with self._lock:
            return self._nbytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items
