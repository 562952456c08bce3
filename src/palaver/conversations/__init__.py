"""Server-side conversations: which conversation a request continues, what history goes
upstream (merge, instruction priority), what is stored, and the Conversations API.

    stage.py      the conversation stage of the pipeline (``Conversations``, ``Turn``)
    history.py    merging stored history with a request (pure functions)
    priority.py   instruction priority: ordering and trimming (pure functions)
    items.py      chat messages <-> Conversations API items
    routes.py     ``/v1/conversations``
"""

from __future__ import annotations

from palaver.conversations.stage import (
    ID_PATTERN,
    Conversations,
    Turn,
    deleted_in_flight,
    not_found,
    reply_message,
)

__all__ = [
    "ID_PATTERN",
    "Conversations",
    "Turn",
    "deleted_in_flight",
    "not_found",
    "reply_message",
]
