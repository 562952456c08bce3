"""Instruction priority, system > user > assistant, as small pure functions.

- ``arrange``: system and developer messages first, in their order; the dialogue after them
  keeps its order.
- ``keep``: which messages survive a cap on their number and, given each message's tokens, on
  their tokens. Messages are dropped oldest first by class: assistant and tool messages before
  user messages, user messages before system ones, until both caps hold or nothing more may
  go. The newest user message and everything after it are never dropped, nor anything from
  ``protect_from`` on (the request's own messages). An assistant message with ``tool_calls``
  and the tool results that answer it go together.
"""

from __future__ import annotations

from collections.abc import Sequence
from operator import itemgetter
from typing import Any, Protocol

from palaver.protocol import Message

INSTRUCTION_ROLES = frozenset({"system", "developer"})
_RANK = {"system": 2, "developer": 2, "user": 1}  # everything else (assistant, tool): 0


def is_instruction(message: Message) -> bool:
    return message.get("role") in INSTRUCTION_ROLES


def arrange(messages: list[Message]) -> list[Message]:
    """System and developer messages first; the list itself when already so."""
    seen_dialogue = False
    for message in messages:
        if is_instruction(message):
            if seen_dialogue:
                break
        else:
            seen_dialogue = True
    else:
        return messages
    return [m for m in messages if is_instruction(m)] + [
        m for m in messages if not is_instruction(m)
    ]


def _units(messages: Sequence[Message]) -> list[tuple[int, list[int]]]:
    """Indices grouped into units that are kept or dropped whole, each with its class (the
    rank of its first message's role)."""
    units: list[tuple[int, list[int]]] = []
    open_calls: dict[str, list[int]] = {}
    for index, message in enumerate(messages):
        role = message.get("role", "")
        if role == "tool":
            unit = open_calls.get(str(message.get("tool_call_id")))
            if unit is not None:
                unit.append(index)
                continue
        unit = [index]
        units.append((_RANK.get(role, 0), unit))
        if role == "assistant":
            for call in message.get("tool_calls") or ():
                if isinstance(call, dict) and "id" in call:
                    open_calls[str(call["id"])] = unit
    return units


def newest_user_index(messages: Sequence[Message]) -> int:
    for index in range(len(messages) - 1, -1, -1):
        if messages[index].get("role") == "user":
            return index
    return len(messages)


def keep(
    messages: Sequence[Message],
    limit: int,
    protect_from: int | None = None,
    costs: Sequence[int] | None = None,
    budget: int | None = None,
) -> list[int]:
    """The indices of the messages that stay, in order: at most ``limit`` of them and, with
    ``costs`` (each message's tokens) and ``budget``, at most ``budget`` tokens, as far as
    the messages that may be dropped allow (the caller checks the tokens of what stays)."""
    excess = len(messages) - limit
    over = 0 if costs is None or budget is None else sum(costs) - budget
    if excess <= 0 and over <= 0:
        return list(range(len(messages)))
    floor = newest_user_index(messages)
    if protect_from is not None:
        floor = min(floor, protect_from)
    roles = [message.get("role") for message in messages]
    if "tool" in roles:
        dropped = _drop_units(messages, floor, excess, over, costs)
    else:
        dropped = _drop_singly(roles, floor, excess, over, costs)
    return [i for i in range(len(messages)) if i not in dropped]


def _drop_units(
    messages: Sequence[Message],
    floor: int,
    excess: int,
    over: int,
    costs: Sequence[int] | None,
) -> set[int]:
    """What goes, by unit (a tool call and its results together), the lowest class first
    and the oldest first within a class, until both excesses are gone."""
    candidates = [(rank, unit) for rank, unit in _units(messages) if unit[-1] < floor]
    candidates.sort(key=itemgetter(0))  # stable: oldest first within a class
    dropped: set[int] = set()
    for _, unit in candidates:
        if excess <= 0 and over <= 0:
            break
        dropped.update(unit)
        excess -= len(unit)
        if costs is not None:
            over -= sum(costs[i] for i in unit)
    return dropped


def _drop_singly(
    roles: Sequence[Any],
    floor: int,
    excess: int,
    over: int,
    costs: Sequence[int] | None,
) -> set[int]:
    """``_drop_units`` for messages without tool results, where every unit is one message
    (the common case, and a turn's hot path: no unit lists are built and nothing is sorted;
    a history at its cap gives up its oldest assistant message in a few steps)."""
    dropped: set[int] = set()
    for rank in (0, 1, 2):
        for index in range(floor):
            if _RANK.get(roles[index], 0) != rank:
                continue
            if excess <= 0 and over <= 0:
                return dropped
            dropped.add(index)
            excess -= 1
            if costs is not None:
                over -= costs[index]
    return dropped


def trim(messages: list[Message], limit: int, protect_from: int | None = None) -> list[Message]:
    kept = keep(messages, limit, protect_from)
    if len(kept) == len(messages):
        return messages
    return [messages[i] for i in kept]


class Budget(Protocol):
    """What trimming needs of a token budget (``palaver.tokens.Budget``)."""

    available: int

    def costs(self, messages: Sequence[Message]) -> list[int]: ...

    def too_long(self, messages: Sequence[Message], param: str) -> Exception: ...


def fit(
    messages: list[Message],
    limit: int,
    protect_from: int,
    budget: Budget | None,
    param: str,
    by_tokens: bool = True,
) -> tuple[list[Message], int]:
    """``messages`` trimmed to ``limit`` and, with a budget (and ``by_tokens``), to its
    tokens; and how many were dropped. Raises the budget's ``too_long`` when what may not be
    dropped does not fit (with ``by_tokens`` false: when the messages do not fit)."""
    costs = None if budget is None else budget.costs(messages)
    tokens = None if budget is None or not by_tokens else budget.available
    kept = keep(messages, limit, protect_from, costs, tokens)
    sent = messages if len(kept) == len(messages) else [messages[i] for i in kept]
    if budget is not None and costs is not None and sum(costs[i] for i in kept) > budget.available:
        raise budget.too_long(sent, param)
    return sent, len(messages) - len(kept)
