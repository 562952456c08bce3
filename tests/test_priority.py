"""Instruction priority: ordering, and the trimming rule as properties (hypothesis)."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from palaver.conversations import priority
from palaver.conversations.priority import arrange, keep, newest_user_index, trim

Message = dict[str, Any]


def m(role: str, text: str = "", **extra: Any) -> Message:
    return {"role": role, "content": text, **extra}


def test_arrange_puts_instructions_first_in_order() -> None:
    messages = [m("user", "u1"), m("system", "s1"), m("assistant", "a1"), m("developer", "d1")]
    assert arrange(messages) == [messages[1], messages[3], messages[0], messages[2]]
    already = [m("system"), m("user")]
    assert arrange(already) is already


def test_trim_drops_assistants_then_users_then_system() -> None:
    messages = [
        m("system", "s"),
        m("user", "u1"),
        m("assistant", "a1"),
        m("user", "u2"),
        m("assistant", "a2"),
        m("user", "u3"),
    ]
    assert [x["content"] for x in trim(messages, 4)] == ["s", "u1", "u2", "u3"]
    assert [x["content"] for x in trim(messages, 3)] == ["s", "u2", "u3"]
    assert [x["content"] for x in trim(messages, 1)] == ["u3"]


def test_tool_groups_go_together() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    messages = [
        m("user", "u1"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        m("assistant", "a1"),
        m("user", "u2"),
    ]
    kept = trim(messages, 4)
    assert [x["role"] for x in kept] == ["user", "assistant", "user"]  # the pair went together
    assert kept[1]["content"] == "a1"


def test_protected_request_messages_are_kept_whole() -> None:
    messages = [m("user", "old"), m("assistant", "a"), m("user", "n1"), m("assistant", "few-shot")]
    assert keep(messages, 1, protect_from=2) == [2, 3]


# --- properties --------------------------------------------------------------------------------

ROLES = st.sampled_from(["system", "developer", "user", "assistant", "tool_group"])


@st.composite
def conversations(draw: st.DrawFn) -> list[Message]:
    kinds = draw(st.lists(ROLES, max_size=40))
    messages: list[Message] = []
    for index, kind in enumerate(kinds):
        if kind == "tool_group":
            calls = draw(st.integers(min_value=1, max_value=3))
            ids = [f"call_{index}_{n}" for n in range(calls)]
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {"id": i, "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        for i in ids
                    ],
                }
            )
            messages.extend({"role": "tool", "tool_call_id": i, "content": "r"} for i in ids)
        else:
            messages.append(m(kind, f"{kind}-{index}"))
    return messages


RANK = {"system": 2, "developer": 2, "user": 1}


@settings(max_examples=300, deadline=None)
@given(conversations(), st.integers(min_value=1, max_value=30))
def test_trim_properties(messages: list[Message], limit: int) -> None:
    kept = keep(messages, limit)
    survivors = [messages[i] for i in kept]
    newest = newest_user_index(messages)

    # order kept: a subsequence, indices ascending
    assert kept == sorted(kept)
    # the newest user message and everything after it are kept
    assert set(range(newest, len(messages))) <= set(kept)
    # never over the cap, unless nothing droppable is left (all that stays is protected:
    # the newest user turn, or a tool group whose results reach into it)
    if len(kept) > limit:
        late_results = {x["tool_call_id"] for x in messages[newest:] if x["role"] == "tool"}
        for i in kept:
            if i < newest:
                calls = {c["id"] for c in messages[i].get("tool_calls") or ()}
                in_group = (
                    messages[i]["role"] == "tool" and messages[i]["tool_call_id"] in late_results
                )
                assert calls & late_results or in_group
    if len(messages) <= limit:
        assert len(kept) == len(messages)
    # dropped by class: nothing of a higher class goes while a lower unprotected one stays
    dropped = [i for i in range(len(messages)) if i not in set(kept)]
    if dropped:
        highest_dropped = max(RANK.get(messages[i]["role"], 0) for i in dropped)
        for i in kept:
            if i < newest:
                assert RANK.get(messages[i]["role"], 0) >= highest_dropped
    # tool groups whole: every tool result kept with its call, and the reverse
    kept_calls = {
        c["id"] for x in survivors if x["role"] == "assistant" for c in x.get("tool_calls") or ()
    }
    kept_results = {x["tool_call_id"] for x in survivors if x["role"] == "tool"}
    assert kept_calls == kept_results


@settings(max_examples=200, deadline=None)
@given(conversations(), st.integers(min_value=1, max_value=30))
def test_trim_is_tight(messages: list[Message], limit: int) -> None:
    """Dropping stops as soon as the cap is met: at most one unit too many goes."""
    kept = keep(messages, limit)
    if len(messages) > limit and len(kept) < limit:
        assert limit - len(kept) <= 3  # the last unit dropped was a tool group (max 4 messages)


@settings(max_examples=300, deadline=None)
@given(
    conversations(),
    st.integers(min_value=0, max_value=30),
    st.data(),
)
def test_messages_without_tool_results_are_dropped_as_units_would_be(
    messages: list[Message], floor: int, data: st.DataObject
) -> None:
    """Without tool results every unit is one message, and the one-by-one path (no unit
    lists, no sort) drops exactly what the unit path drops, by count and by tokens."""
    messages = [x for x in messages if x["role"] != "tool"]
    floor = min(floor, len(messages))
    costs = data.draw(st.lists(st.integers(0, 50), min_size=len(messages), max_size=len(messages)))
    excess = data.draw(st.integers(-3, len(messages)))
    over = data.draw(st.integers(-10, sum(costs)))
    for cost in (None, costs):
        roles = [x["role"] for x in messages]
        singly = priority._drop_singly(roles, floor, excess, over, cost)
        assert singly == priority._drop_units(messages, floor, excess, over, cost)


def test_keep_with_and_without_tool_results() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
    plain = [m("user", "u1"), m("assistant", "a1"), m("user", "u2")]
    assert keep(plain, 2) == [0, 2]
    tooled = [
        m("user", "u1"),
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "42"},
        m("user", "u2"),
    ]
    assert keep(tooled, 3) == [0, 3]  # the call and its result went together


@settings(max_examples=200, deadline=None)
@given(conversations())
def test_arrange_properties(messages: list[Message]) -> None:
    arranged = arrange(messages)
    assert sorted(map(id, arranged)) == sorted(map(id, messages))
    instructions = [x for x in messages if x["role"] in ("system", "developer")]
    assert arranged[: len(instructions)] == instructions
    assert arranged[len(instructions) :] == [
        x for x in messages if x["role"] not in ("system", "developer")
    ]
