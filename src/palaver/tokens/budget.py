"""A request's token budget: the model's context window less the room kept for the reply.

``Budgets.open`` gives one for a request whose model has a known window (None otherwise):
the prompt (messages, the reply priming, the tools) plus the reply room (``max_tokens`` /
``max_completion_tokens``, else ``conversations.reply_reserve``) must fit the window.

Counting is cheap because it is done once per message: a stored message carries its count
(``counts`` gives what to store with new ones), a message without one (stored before counts
were kept, or added through the Conversations API) is counted once per process and
remembered by its item id, and a request's own messages are counted as they arrive.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from palaver.errors import InvalidRequest
from palaver.protocol import Json, Message
from palaver.tokens.counting import REPLY_PRIMING, Counter
from palaver.tokens.encodings import EncodingName, get_encoding
from palaver.tokens.models import ModelInfo, ModelTable

Counts = dict[str, int]  # tokens of one message, by encoding name
ITEM_MEMO = 100_000  # counts of stored messages that carry none, remembered per process


class Budget:
    """The token budget of one request."""

    __slots__ = ("_items", "_known", "available", "counter", "fixed", "reply", "window")

    def __init__(
        self,
        counter: Counter,
        window: int,
        reply: int,
        fixed: int,
        items: OrderedDict[tuple[str, str], int],
    ) -> None:
        self.counter = counter
        self.window = window
        self.reply = reply
        self.fixed = fixed  # the reply priming and the tools
        self.available = window - reply - fixed  # what the messages may take
        self._known: dict[int, int] = {}  # id(message) -> its tokens, for this request
        self._items = items

    @property
    def encoding(self) -> str:
        return self.counter.name

    def cost(self, message: Message) -> int:
        key = id(message)
        found = self._known.get(key)
        if found is None:
            found = self._known[key] = self.counter.message(message)
        return found

    def learn(self, message: Message, counts: Mapping[str, int] | None, item_id: str) -> None:
        """What a stored message costs: its stored count, else the one remembered for its
        item, else counted now (and remembered)."""
        found = counts.get(self.counter.name) if counts else None
        if found is None:
            memo = (self.counter.name, item_id)
            found = self._items.get(memo)
            if found is None:
                found = self.counter.message(message)
                self._items[memo] = found
                if len(self._items) > ITEM_MEMO:
                    self._items.popitem(last=False)
        self._known[id(message)] = found

    def reserve(self, messages: Sequence[Message]) -> None:
        """Keep room for ``messages`` that are sent but not trimmed (a response's
        instructions)."""
        taken = sum(self.cost(m) for m in messages)
        self.fixed += taken
        self.available -= taken

    def learn_all(
        self,
        messages: Sequence[Message],
        counts: Sequence[Counts | None] | None,
        ids: Sequence[str],
    ) -> None:
        """``learn`` for stored ``messages``, with their ``counts`` (None: none stored)."""
        known = counts if counts is not None and len(counts) == len(messages) else None
        for index, message in enumerate(messages):
            self.learn(message, None if known is None else known[index], ids[index])

    def costs(self, messages: Sequence[Message]) -> list[int]:
        return [self.cost(m) for m in messages]

    def counts(self, messages: Iterable[Message]) -> list[Counts]:
        """What to store with ``messages``."""
        return [{self.counter.name: self.cost(m)} for m in messages]

    def prompt(self, messages: Sequence[Message]) -> int:
        return sum(self.cost(m) for m in messages) + self.fixed

    def fits(self, messages: Sequence[Message]) -> bool:
        return sum(self.cost(m) for m in messages) <= self.available

    def too_long(self, messages: Sequence[Message], param: str) -> InvalidRequest:
        return InvalidRequest(
            f"This model's maximum context length is {self.window} tokens. However, your "
            f"messages resulted in {self.prompt(messages)} tokens, and {self.reply} are kept "
            "for the reply. Please reduce the length of the messages"
            + (" or of max_tokens." if self.reply > 0 else "."),
            param=param,
            code="context_length_exceeded",
        )

    def check(self, messages: Sequence[Message], param: str) -> None:
        """400 ``context_length_exceeded`` unless ``messages`` fit."""
        if not _surely_fit(messages, self.available) and not self.fits(messages):
            raise self.too_long(messages, param)


def _surely_fit(messages: Sequence[Message], available: int) -> bool:
    """Whether ``messages`` fit without counting them: a token is at least one byte, so a
    message of text takes at most its UTF-8 bytes plus its framing."""
    bound = 0
    for message in messages:
        content = message.get("content")
        if not (content is None or isinstance(content, str)):
            return False  # parts (images...): count them
        bound += 8 + len(str(message.get("role", ""))) + len(str(message.get("name", "")))
        if content:
            bound += len(content.encode())
        if message.get("tool_calls") or message.get("refusal"):
            return False
        if bound > available:
            return False
    return True


class Budgets:
    """Budgets for every model palaver knows a window for."""

    def __init__(self, models: ModelTable, reply_reserve: int) -> None:
        self._models = models
        self._reply_reserve = reply_reserve
        self._counters: dict[str, Counter] = {}
        self._items: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._loading: dict[str, asyncio.Future[Counter]] = {}

    def info(self, model: str) -> ModelInfo | None:
        return self._models.lookup(model)

    async def open(self, model: str, payload: Json, stateless: bool = False) -> Budget | None:
        """The budget of a request for ``model`` with chat ``payload``; None when palaver
        knows no window for the model, or when a ``stateless`` request (no history, nothing
        to store) surely fits without counting (then no tokenizer is even loaded)."""
        info = self._models.lookup(model)
        if info is None:
            return None
        reply = _reply_room(payload, self._reply_reserve)
        if (
            stateless
            and not payload.get("tools")
            and _surely_fit(payload["messages"], info.context_window - reply - REPLY_PRIMING)
        ):
            return None
        counter = self._counters.get(info.tokenizer) or await self._counter(info.tokenizer)
        fixed = REPLY_PRIMING + counter.tools(payload.get("tools"))
        return Budget(counter, info.context_window, reply, fixed, self._items)

    async def _counter(self, name: EncodingName) -> Counter:
        """Load an encoding off the event loop, once however many requests wait for it."""
        loading = self._loading.get(name)
        if loading is None:
            loop = asyncio.get_running_loop()
            loading = self._loading[name] = loop.run_in_executor(None, _load, name)
        try:
            counter = await asyncio.shield(loading)
        finally:
            if loading.done():
                self._loading.pop(name, None)
        self._counters[name] = counter
        return counter


def _load(name: EncodingName) -> Counter:
    return Counter(get_encoding(name))


def _reply_room(payload: Json, reserve: int) -> int:
    for key in ("max_completion_tokens", "max_tokens"):
        value: Any = payload.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return reserve
