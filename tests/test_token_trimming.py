"""Trimming to a context window by instruction priority, as properties (hypothesis), and the
merge of a stored history with a request under a token budget."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from palaver.conversations.history import merge
from palaver.conversations.priority import fit
from palaver.errors import InvalidRequest
from palaver.tokens import Counter, get_encoding
from palaver.tokens.budget import Budget
from tests.test_priority import RANK, conversations

Message = dict[str, Any]


class FakeBudget:
    """Costs chosen by the test (each message's ``cost`` field)."""

    def __init__(self, available: int) -> None:
        self.available = available

    def costs(self, messages: Sequence[Message]) -> list[int]:
        return [int(m.get("cost", 1)) for m in messages]

    def too_long(self, messages: Sequence[Message], param: str) -> Exception:
        return InvalidRequest("too long", param=param, code="context_length_exceeded")


@st.composite
def dialogues(draw: st.DrawFn) -> tuple[list[Message], list[Message], int]:
    """A stored history, a request (ending with a user message, maybe a system one before
    it), each message with a cost, and a budget."""
    history = draw(conversations())
    request: list[Message] = []
    if draw(st.booleans()):
        request.append({"role": "system", "content": "req-system"})
    request.append({"role": "user", "content": "req-user"})
    for message in [*history, *request]:
        message["cost"] = draw(st.integers(min_value=1, max_value=50))
    return history, request, draw(st.integers(min_value=1, max_value=600))


@settings(max_examples=400, deadline=None)
@given(dialogues(), st.integers(min_value=2, max_value=60))
def test_fit_properties(case: tuple[list[Message], list[Message], int], limit: int) -> None:
    history, request, available = case
    messages = [*history, *request]
    budget = FakeBudget(available)
    own = sum(m["cost"] for m in request)
    if own > available:  # refused only when the request's own messages do not fit
        with pytest.raises(InvalidRequest) as raised:
            fit(messages, limit, len(history), budget, "messages")
        assert raised.value.code == "context_length_exceeded"
        assert raised.value.param == "messages"
        return
    sent, trimmed = fit(messages, limit, len(history), budget, "messages")
    assert own <= available
    # the sent messages fit
    assert sum(m["cost"] for m in sent) <= available
    # the request's messages are all sent, and they come last in their order
    assert sent[len(sent) - len(request) :] == request
    # order kept: a subsequence of the input
    positions = [next(i for i, m in enumerate(messages) if m is s) for s in sent]
    assert positions == sorted(positions)
    # the header's count is the number dropped
    assert trimmed == len(messages) - len(sent)
    # dropped by class: nothing of a higher class goes while a lower stored one stays
    kept = {id(m) for m in sent}
    dropped = [m for m in history if id(m) not in kept]
    if dropped:
        highest = max(RANK.get(m["role"], 0) for m in dropped)
        assert all(RANK.get(m["role"], 0) >= highest for m in history if id(m) in kept)
    # system messages are dropped last: one goes only when no stored dialogue is left
    if any(m["role"] in ("system", "developer") for m in dropped):
        assert all(m["role"] in ("system", "developer") for m in history if id(m) in kept)
    # tool groups stay whole
    calls = {c["id"] for m in sent if m["role"] == "assistant" for c in m.get("tool_calls") or ()}
    results = {m["tool_call_id"] for m in sent if m["role"] == "tool"}
    assert calls == results
    # nothing is dropped while everything fits
    if sum(m["cost"] for m in messages) <= available and len(messages) <= limit:
        assert trimmed == 0


@settings(max_examples=200, deadline=None)
@given(dialogues())
def test_without_token_trimming_an_overflow_is_an_error(
    case: tuple[list[Message], list[Message], int],
) -> None:
    """``truncation: "disabled"`` (Responses): the count cap still trims, tokens never do."""
    history, request, available = case
    messages = [*history, *request]
    total = sum(m["cost"] for m in messages)
    if total > available:
        with pytest.raises(InvalidRequest) as raised:
            fit(messages, 1000, len(history), FakeBudget(available), "input", False)
        assert raised.value.param == "input"
        return
    sent, trimmed = fit(messages, 1000, len(history), FakeBudget(available), "input", False)
    assert trimmed == 0
    assert sent == messages


def real_budget(window: int, reply: int = 0) -> Budget:
    from collections import OrderedDict

    counter = Counter(get_encoding("o200k_base"))
    return Budget(counter, window, reply, 3, OrderedDict())


def test_merge_keeps_the_system_prompt_and_recent_turns_within_the_window() -> None:
    history: list[Message] = [{"role": "system", "content": "Answer like a pirate."}]
    for turn in range(40):
        history.append({"role": "user", "content": f"Question {turn}: " + "tell me more " * 10})
        history.append({"role": "assistant", "content": f"Answer {turn}: " + "arr matey " * 10})
    budget = real_budget(2000, reply=1024)
    merged = merge(history, [{"role": "user", "content": "And now?"}], 1000, budget)
    sent = merged.sent
    assert sent[0]["content"] == "Answer like a pirate."
    assert sent[-1]["content"] == "And now?"
    assert budget.prompt(sent) <= 2000 - 1024
    assert merged.trimmed == len(history) + 1 - len(sent) > 0
    # by class (CONTRACT §5): every stored answer goes before a question does, and of the
    # questions the oldest go first
    roles = [m["role"] for m in sent]
    if "assistant" not in roles:
        assert sent[-2]["content"].startswith("Question 39")
    kept_questions = [m["content"] for m in sent[1:-1] if m["role"] == "user"]
    assert (
        kept_questions
        == [m["content"] for m in history if m["role"] == "user"][
            len(history) // 2 - len(kept_questions) :
        ]
    )
    assert merged.new == [{"role": "user", "content": "And now?"}]


def test_a_request_that_alone_does_not_fit_is_refused() -> None:
    budget = real_budget(200, reply=100)
    with pytest.raises(InvalidRequest) as raised:
        merge([], [{"role": "user", "content": "word " * 500}], 50, budget)
    assert raised.value.code == "context_length_exceeded"
    assert raised.value.param == "messages"
    assert "maximum context length is 200 tokens" in raised.value.message


def test_stored_counts_are_used_not_recounted() -> None:
    budget = real_budget(10_000)
    message = {"role": "user", "content": "hello"}
    budget.learn(message, {"o200k_base": 777}, "msg_1")
    assert budget.cost(message) == 777
    other = {"role": "user", "content": "hello"}
    budget.learn(other, {"cl100k_base": 5}, "msg_2")  # another encoding's count: counted
    assert budget.cost(other) == Counter(get_encoding("o200k_base")).message(other)
    assert budget.counts([message]) == [{"o200k_base": 777}]


async def test_a_stateless_request_that_surely_fits_is_not_counted() -> None:
    """A request with no history and nothing to store, whose text is shorter in bytes than
    the room left, cannot exceed the window (a token is at least a byte): no budget, no
    tokenizer on the request path."""
    from palaver.tokens import Budgets, ModelTable

    budgets = Budgets(ModelTable({"tiny": (300, None)}), 100)
    short = {"messages": [{"role": "user", "content": "Hello there"}]}
    assert await budgets.open("tiny", short, stateless=True) is None
    assert await budgets.open("unknown", short, stateless=False) is None
    budget = await budgets.open("tiny", short, stateless=False)
    assert budget is not None
    assert budget.available == 300 - 100 - 3
    long = {"messages": [{"role": "user", "content": "word " * 100}]}
    assert await budgets.open("tiny", long, stateless=True) is not None
    tools = {**short, "tools": [{"type": "function", "function": {"name": "f"}}]}
    assert await budgets.open("tiny", tools, stateless=True) is not None
