"""Random ids: secure (from ``os.urandom``) without a system call for each.

Every request makes several (its request id, the items and turn it stores, a conversation's
id): drawing them one ``os.urandom`` call each cost ~5 % of a conversation turn. The bytes are
read 4 KiB at a time instead and handed out in order, each byte once; a forked process starts
with an empty pool, so no two processes ever hand out the same bytes.
"""

from __future__ import annotations

import os
import threading

_POOL_BYTES = 4096
_pool = b""
_used = 0
_lock = threading.Lock()  # the sqlite store's thread draws ids too


def token_hex(nbytes: int) -> str:
    """``2 * nbytes`` hex digits of cryptographically secure random (as ``secrets.token_hex``)."""
    global _pool, _used
    with _lock:
        end = _used + nbytes
        if end > len(_pool):
            _pool, _used, end = os.urandom(max(_POOL_BYTES, nbytes)), 0, nbytes
        start, _used = _used, end
        return _pool[start:end].hex()


def _forget() -> None:
    global _pool, _used, _lock
    _pool, _used, _lock = b"", 0, threading.Lock()


os.register_at_fork(after_in_child=_forget)
