"""The Responses stage of the chat pipeline: what history a response continues, and what is
stored once its answer is complete.

A Responses request travels the chat pipeline as a ``ChatCall`` whose state is a
``ResponseTurn``: its ``begin`` puts the messages the model sees into the chat payload (the
instructions, then the chain's context or the conversation's history, then the input, trimmed
by instruction priority), and the ``finish`` the pipeline calls with the completion builds the
response and stores it: the response record first (one write), then the turn of its
conversation, if any. A response whose conversation write fails is removed again, so a client
told of an error never finds its response.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from palaver.conversations import Conversations, Turn
from palaver.conversations.history import merge
from palaver.conversations.items import to_items
from palaver.conversations.priority import arrange, fit, trim
from palaver.errors import InvalidRequest, PalaverError
from palaver.protocol import Json, Message
from palaver.responses.events import EventStream
from palaver.responses.output import (
    finish,
    new_response_id,
    owner_of_item,
    reply_messages,
    skeleton,
)
from palaver.responses.request import Translation, input_messages
from palaver.responses.store import ResponseStore, StoredResponse
from palaver.stores.base import StoredMessage, new_item_id
from palaver.tokens import Budget

log = logging.getLogger("palaver.responses")


def previous_not_found(response_id: str) -> InvalidRequest:
    return InvalidRequest(
        f"Previous response with id '{response_id}' not found.",
        param="previous_response_id",
        code="previous_response_not_found",
    )


class Responses:
    def __init__(
        self, store: ResponseStore, conversations: Conversations, max_messages: int
    ) -> None:
        self.store = store
        self._conversations = conversations
        self._max_messages = max_messages

    def turn(self, tenant: str, translation: Translation) -> ResponseTurn:
        return ResponseTurn(self, tenant, translation)

    async def _resolve(self, tenant: str, translation: Translation) -> list[Message]:
        """The request's input with each ``item_reference`` replaced by the stored item it
        names: an output item of a stored response of this key (its id says which), or an
        item of the response the request continues."""
        items = translation.referring or []
        records: dict[str, StoredResponse | None] = {}
        resolved: list[Any] = []
        for index, item in enumerate(items):
            if not (isinstance(item, dict) and item.get("type") == "item_reference"):
                resolved.append(item)
                continue
            item_id = item["id"]
            found = None
            for owner in (owner_of_item(item_id), translation.request.previous_response_id):
                if owner is None:
                    continue
                if owner not in records:
                    records[owner] = await self.store.get(owner, tenant)
                record = records[owner]
                found = record.item(item_id) if record is not None else None
                if found is not None:
                    break
            if found is None:
                raise InvalidRequest(
                    f"Item with id '{item_id}' not found.", param=f"input[{index}].id"
                )
            resolved.append(found)
        return input_messages(resolved)

    async def _history(
        self, turn: ResponseTurn, translation: Translation, budget: Budget | None
    ) -> tuple[list[Message], Turn | None]:
        request = translation.request
        previous = request.previous_response_id
        if previous is not None:
            record = await self.store.get(previous, turn.tenant)
            if record is None:
                raise previous_not_found(previous)
            if budget is not None:
                ids = [f"{previous}:{index}" for index in range(len(record.context))]
                budget.learn_all(record.context, record.context_tokens, ids)
            return record.context, None
        conversation = request.conversation_id
        if conversation is not None:
            conversation_turn, history = await self._conversations.resume(
                turn.tenant, conversation, translation.new, "conversation", budget
            )
            return history, conversation_turn
        return [], None


class ResponseTurn:
    """One Responses request, from its history to its stored response."""

    def __init__(self, responses: Responses, tenant: str, translation: Translation) -> None:
        self._responses = responses
        self.tenant = tenant
        self.translation = translation
        self.id = new_response_id()
        self.base = skeleton(self.id, int(time.time()), translation.settings, "in_progress")
        self.stream: EventStream | None = None  # set for a streamed response
        self.response: Json | None = None  # the finished response
        self._history: list[Message] = []
        self._conversation: Turn | None = None
        self.new: list[Message] = translation.new  # what this response adds to the history
        self.budget: Budget | None = None
        self.trimmed = 0  # stored messages left out of what the model sees

    @property
    def store(self) -> bool:
        return bool(self.translation.settings["store"])

    async def begin(self, payload: Json, budget: Budget | None) -> ResponseTurn:
        """Put the messages the model sees into ``payload`` (the pipeline's conversation
        stage), trimmed to ``max_messages`` and, with ``truncation: "auto"``, to the
        ``budget`` (``"disabled"``: a 400 when they do not fit); returns itself, whose
        ``finish`` the pipeline calls with the completion."""
        translation = self.translation
        self.budget = budget
        if translation.referring is not None:
            translation.new = self.new = await self._responses._resolve(self.tenant, translation)
        self._history, self._conversation = await self._responses._history(
            self, translation, budget
        )
        history = self._history
        max_messages = self._responses._max_messages
        by_tokens = translation.settings.get("truncation") == "auto"
        if budget is not None:
            budget.reserve(translation.instructions)
        if self._conversation is not None:
            # A conversation is shared with chat requests: the same merge (CONTRACT §5), so
            # a resent transcript or system message is neither sent nor stored twice.
            merged = merge(history, translation.new, max_messages, budget, "input", by_tokens)
            self._conversation.new = self.new = merged.new
            sent, self.trimmed = merged.sent, merged.trimmed
        else:
            sent, self.trimmed = fit(
                [*history, *translation.new], max_messages, len(history), budget, "input", by_tokens
            )
        payload["messages"] = arrange([*translation.instructions, *sent])
        if not payload["messages"]:
            raise InvalidRequest("Missing required parameter: 'input'.", param="input")
        return self

    async def __call__(self, completion: Json) -> bool:
        """Build the response from ``completion`` and store it (the pipeline's ``finish``)."""
        stream = self.stream
        output = stream.output() if stream is not None and stream.output() else None
        response = finish(self.base, completion, output)
        reply = reply_messages(response)
        self.response = response
        new = self.new
        stored = self.store
        if stored:
            context = trim(
                [*self._history, *new, *reply],
                self._responses._max_messages,
                protect_from=len(self._history),
            )
            now = time.time()
            items = [
                item
                for message in new
                for item in to_items(StoredMessage(new_item_id(), now, message))
            ]
            tokens = None if self.budget is None else self.budget.counts(context)
            record = StoredResponse(self.id, self.tenant, response, items, context, tokens)
            await self._responses.store.put(record)
        if self._conversation is not None:
            try:
                await self._responses._conversations.commit(self._conversation, reply[0])
            except PalaverError:
                if stored:
                    await self._forget()
                raise
        return True

    async def _forget(self) -> None:
        try:
            await self._responses.store.delete(self.id, self.tenant)
        except Exception:
            log.warning("could not remove response %s after its conversation failed", self.id)
