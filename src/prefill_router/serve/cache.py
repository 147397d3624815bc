"""A bounded LRU keyed by a keyed hash (HMAC-SHA256) of the routing text: the text is never stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class TextHasher:
    """HMAC-SHA256 of a text under a per-process random key (or a configured one)."""

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)

    def __call__(self, text: str) -> str:
        """Hex digest of ``text``."""
        return hmac.new(self._key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()


class LruCache(Generic[V]):
    """At most ``size`` values by key, least recently used first out; ``size == 0`` stores nothing."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._items: OrderedDict[str, V] = OrderedDict()

    def get(self, key: str) -> V | None:
        """The value of ``key`` (now the most recently used), or None."""
        value = self._items.get(key)
        if value is not None:
            self._items.move_to_end(key)
        return value

    def put(self, key: str, value: V) -> None:
        """Store ``value``, evicting the least recently used entry when full."""
        if self.size <= 0:
            return
        self._items[key] = value
        self._items.move_to_end(key)
        while len(self._items) > self.size:
            self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)
