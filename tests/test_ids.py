"""palaver.ids: secure random ids from a pool, never the same bytes twice."""

from __future__ import annotations

import os
import threading

from palaver import ids


def test_ids_are_hex_of_the_size_asked_and_never_repeat() -> None:
    seen = [ids.token_hex(12) for _ in range(2000)]  # several pools' worth
    assert all(len(t) == 24 and int(t, 16) >= 0 for t in seen)
    assert len(set(seen)) == len(seen)
    assert len(ids.token_hex(5000)) == 10000  # more than a pool at once


def test_threads_drawing_at_once_get_distinct_ids() -> None:
    found: list[str] = []

    def draw() -> None:
        found.extend(ids.token_hex(8) for _ in range(5000))

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(found)) == 20000


def test_a_forked_child_draws_its_own_bytes() -> None:
    ids.token_hex(4)  # the parent's pool is filled
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        os.write(write, ids.token_hex(16).encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    from_child = os.read(read, 64).decode()
    os.close(read)
    assert from_child != ids.token_hex(16)
