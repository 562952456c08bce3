"""History merge, as pure functions: what to send upstream and what to store for one turn.

A client may send only its new messages, or the whole transcript it holds (or any tail of it).
The last stored message marks the seam: if the request contains it, everything after its last
occurrence is new, and the stored messages the request does not repeat are put before it.
Without a seam, a request that begins with the stored dialogue (at least a user message and
its reply: a client regenerating or editing its last turn) is a whole transcript of its own
and is sent as it is; any other request is new, and the stored history is put before it.
A system message identical to a stored one is neither stored nor sent twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from palaver.conversations.priority import (
    Budget,
    arrange,
    fit,
    is_instruction,
    newest_user_index,
)
from palaver.protocol import Message


def _canonical(value: Any) -> Any:
    """JSON as its meaning: 1.0 and 1 alike (key order and spacing go in the encoding)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_canonical(v) for v in value]
    return value


def _json_key(text: Any) -> Any:
    """Tool-call arguments (a JSON document in a string) compared by meaning: clients parse
    and re-serialise them (``{"city": "Paris"}`` comes back as ``{"city":"Paris"}``, blank
    arguments as ``{}``)."""
    if not isinstance(text, str):
        return text
    if not text.strip():
        return "{}"
    try:
        parsed = orjson.loads(text)
    except orjson.JSONDecodeError:
        return text
    return orjson.dumps(_canonical(parsed), option=orjson.OPT_SORT_KEYS).decode()


def _content_key(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        return "".join(str(p.get("text", "")) for p in content)
    return orjson.dumps(_canonical(content), option=orjson.OPT_SORT_KEYS).decode()


def _call_key(call: Any) -> tuple[Any, ...]:
    """A tool call is known by its id and tool: clients send back its arguments re-serialised,
    blank ones as ``{}``, or even re-validated against the tool's schema (the Vercel AI SDK
    fills in defaults and drops unknown keys). Without an id, by its arguments' meaning."""
    if not isinstance(call, dict):
        return (call,)
    call_id = call.get("id")
    if call.get("type") == "custom":
        custom = call.get("custom") or {}
        return (call_id, "custom", custom.get("name"), None if call_id else custom.get("input"))
    function = call.get("function") or {}
    arguments = None if call_id else _json_key(function.get("arguments"))
    return (call_id, "function", function.get("name"), arguments)


def message_key(message: Message) -> tuple[Any, ...]:
    """What makes two messages the same turn, compared by meaning: whatever optional fields a
    client adds, a string content and text parts alike, tool calls by id (see ``_call_key``)."""
    return (
        message.get("role"),
        _content_key(message.get("content")),
        tuple(_call_key(call) for call in message.get("tool_calls") or ()),
        message.get("tool_call_id"),
        message.get("name"),
    )


@dataclass(slots=True)
class Merge:
    sent: list[Message]  # what goes upstream, instructions first
    new: list[Message]  # what this turn adds to the stored history (before the reply)
    trimmed: int = 0  # stored messages left out of what goes upstream


def merge(
    history: Sequence[Message],
    request: list[Message],
    max_messages: int,
    budget: Budget | None = None,
    param: str = "messages",
    by_tokens: bool = True,
) -> Merge:
    """Combine the stored ``history`` with a request's messages, trimmed to ``max_messages``
    and to the ``budget``'s tokens (see ``priority.fit``)."""
    if not history:
        sent, _ = fit(request, len(request), 0, budget, param)
        return Merge(arrange(sent), _without_repeats(request, set()))
    history_keys = _Keys(history)  # computed as needed: most turns need a few of them
    request_keys = [message_key(m) for m in request]
    # The stored instructions matter only to a request that has instructions of its own.
    stored_instructions = (
        {history_keys[i] for i, m in enumerate(history) if is_instruction(m)}
        if any(is_instruction(m) for m in request)
        else set()
    )
    seam = _last_index(request_keys, history_keys[len(history) - 1])
    shared = _shared_start(history, history_keys, request, request_keys) if seam is None else 0
    if shared:
        # The turn's question is stored again with its new answer, even when regenerated.
        shared = min(shared, newest_user_index(request))
        before = [m for m in history if is_instruction(m) and message_key(m) not in request_keys]
        new = _without_repeats(request[shared:], stored_instructions)
        outgoing = request
    elif seam is None:
        before = list(history)
        new = _without_repeats(request, stored_instructions)
        outgoing = [
            m for m in request if not (is_instruction(m) and message_key(m) in stored_instructions)
        ]
    else:
        covered = _covered(history_keys, len(history), request_keys[: seam + 1])
        before = list(history[: len(history) - covered])
        head = [m for m in request[: seam + 1] if is_instruction(m)]
        new = _without_repeats(head + request[seam + 1 :], stored_instructions)
        outgoing = request
    sent, trimmed = fit(before + outgoing, max_messages, len(before), budget, param, by_tokens)
    return Merge(arrange(sent), new, trimmed)


MIN_SHARED_START = 2  # dialogue messages a request must share with the stored start


class _Keys:
    """The ``message_key`` of each stored message, computed the first time it is asked for."""

    __slots__ = ("_keys", "_messages")

    def __init__(self, messages: Sequence[Message]) -> None:
        self._messages = messages
        self._keys: list[tuple[Any, ...] | None] = [None] * len(messages)

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        key = self._keys[index]
        if key is None:
            key = self._keys[index] = message_key(self._messages[index])
        return key


def _shared_start(
    history: Sequence[Message],
    history_keys: _Keys,
    request: list[Message],
    request_keys: list[tuple[Any, ...]],
) -> int:
    """How far into ``request`` its dialogue (instructions aside) repeats the stored dialogue
    from the start; 0 when fewer than ``MIN_SHARED_START`` messages agree."""
    if sum(not is_instruction(m) for m in request) < MIN_SHARED_START:
        return 0  # a request of one new message, as most are
    stored = [i for i, m in enumerate(history) if not is_instruction(m)]
    matched = 0
    end = 0
    for index, (key, message) in enumerate(zip(request_keys, request, strict=True)):
        if is_instruction(message):
            continue
        if matched >= len(stored) or key != history_keys[stored[matched]]:
            break
        matched += 1
        end = index + 1
    return end if matched >= MIN_SHARED_START else 0


def _last_index(keys: list[tuple[Any, ...]], wanted: tuple[Any, ...]) -> int | None:
    for index in range(len(keys) - 1, -1, -1):
        if keys[index] == wanted:
            return index
    return None


def _covered(history_keys: _Keys, count: int, repeated: list[tuple[Any, ...]]) -> int:
    """How many of the newest of the ``count`` stored messages the request repeats (as a
    subsequence)."""
    position = count - 1
    for key in reversed(repeated):
        if position >= 0 and key == history_keys[position]:
            position -= 1
    return count - 1 - position


def _without_repeats(messages: list[Message], stored: set[tuple[Any, ...]]) -> list[Message]:
    """Drop instructions already stored (or repeated within ``messages``)."""
    seen = set(stored)
    kept: list[Message] = []
    for message in messages:
        if is_instruction(message):
            key = message_key(message)
            if key in seen:
                continue
            seen.add(key)
        kept.append(message)
    return kept
