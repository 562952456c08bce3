"""``/v1/conversations``: the OpenAI Conversations API shapes over palaver's stores.

POST   /v1/conversations                     create (optional items, metadata)
GET    /v1/conversations                     the caller's conversations, newest first
GET    /v1/conversations/{id}                the conversation object
POST   /v1/conversations/{id}                update its metadata
DELETE /v1/conversations/{id}                delete it
GET    /v1/conversations/{id}/items          its items, oldest first (limit, after, order)
POST   /v1/conversations/{id}/items          append items
GET    /v1/conversations/{id}/items/{item}   one item
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import partial
from urllib.parse import parse_qs

import orjson

from palaver.asgi import Receive, Scope, Send, read_body, send_json
from palaver.conversations.items import conversation_object, custom_call_ids, from_items, to_items
from palaver.conversations.stage import ID_PATTERN, Conversations, not_found
from palaver.errors import InvalidRequest, NotFound
from palaver.protocol import Json, parse_json_object
from palaver.stores.base import ConversationInfo, StoredMessage

Handler = Callable[[Scope, Receive, Send, str], Awaitable[None]]

MAX_METADATA = 16


def query_of(scope: Scope) -> dict[str, str]:
    # Bytes that are not UTF-8 (raw or %-escaped) become U+FFFD: such a value is simply wrong.
    parsed = parse_qs(scope.get("query_string", b"").decode("utf-8", "replace"))
    return {key: values[-1] for key, values in parsed.items()}


def limit_of(query: dict[str, str], default: int = 20) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    # ASCII digits only: str.isdigit() also accepts '²' or '①', which int() refuses.
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 3 and 1 <= int(raw) <= 100):
        raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit")
    return int(raw)


def _metadata(body: Json, *, required: bool = False) -> dict[str, str]:
    """The metadata of a create (optional) or update (required, as OpenAI) body; null: none."""
    if "metadata" not in body and required:
        raise InvalidRequest("Missing required parameter: 'metadata'.", param="metadata")
    metadata = body.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        raise InvalidRequest("'metadata' must be an object of at most 16 pairs.", param="metadata")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise InvalidRequest(
                "Metadata keys are strings up to 64 characters, values up to 512.",
                param=f"metadata.{key}",
            )
    return metadata


def page_of(data: list[Json], has_more: bool) -> Json:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


def paginate(items: list[Json], query: dict[str, str], default_order: str, where: str) -> Json:
    """A page of ``items`` (oldest first) as the query asks: ``order``, ``after``, ``limit``."""
    limit = limit_of(query)
    order = query.get("order", default_order)
    if order not in ("asc", "desc"):
        raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order")
    if order == "desc":
        items = items[::-1]
    after = query.get("after")
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"No item '{after}' in {where}.", param="after")
        items = items[ids.index(after) + 1 :]
    return page_of(items[:limit], len(items) > limit)


class ConversationHandlers:
    def __init__(self, conversations: Conversations, max_body: int) -> None:
        self._conversations = conversations
        self._store = conversations.store
        self._max_body = max_body

    def routes(self, rest: list[str]) -> dict[str, Handler] | None:
        """The handlers by method for the path segments after ``/conversations`` (each
        already %-decoded: an encoded '/' is part of its segment); None: no such route."""
        if not rest:
            return {"GET": self._list, "POST": self._create}
        conversation_id = rest[0]
        if len(rest) == 1:
            return {
                "GET": partial(self._retrieve, conversation_id=conversation_id),
                "POST": partial(self._update, conversation_id=conversation_id),
                "DELETE": partial(self._delete, conversation_id=conversation_id),
            }
        if rest[1] != "items" or len(rest) > 3:
            return None
        if len(rest) == 2:
            return {
                "GET": partial(self._items, conversation_id=conversation_id),
                "POST": partial(self._add_items, conversation_id=conversation_id),
            }
        return {"GET": partial(self._item, conversation_id=conversation_id, item_id=rest[2])}

    async def _body(self, scope: Scope, receive: Receive) -> Json:
        raw = await read_body(scope, receive, self._max_body)
        if not raw.strip():
            return {}
        return parse_json_object(raw)

    async def _load(
        self, conversation_id: str, tenant: str
    ) -> tuple[ConversationInfo, list[StoredMessage]]:
        _check_id(conversation_id)
        snapshot = await self._store.load(conversation_id, tenant)
        if snapshot.info is None:
            raise not_found(conversation_id)
        return snapshot.info, snapshot.messages

    async def _create(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        body = await self._body(scope, receive)
        metadata = _metadata(body)
        items = body.get("items")
        messages = [] if items is None else from_items(items)
        info = await self._conversations.create(tenant, metadata, messages)
        await send_json(send, 200, orjson.dumps(conversation_object(info)))

    async def _list(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        query = query_of(scope)
        infos, has_more = await self._store.list(tenant, limit_of(query), query.get("after"))
        await send_json(
            send, 200, orjson.dumps(page_of([conversation_object(i) for i in infos], has_more))
        )

    async def _retrieve(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, conversation_id: str
    ) -> None:
        info, _ = await self._load(conversation_id, tenant)
        await send_json(send, 200, orjson.dumps(conversation_object(info)))

    async def _update(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, conversation_id: str
    ) -> None:
        _check_id(conversation_id)
        metadata = _metadata(await self._body(scope, receive), required=True)
        info = await self._store.set_metadata(conversation_id, tenant, metadata)
        if info is None:
            raise not_found(conversation_id)
        await send_json(send, 200, orjson.dumps(conversation_object(info)))

    async def _delete(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, conversation_id: str
    ) -> None:
        _check_id(conversation_id)
        if not await self._store.delete(conversation_id, tenant):
            raise not_found(conversation_id)
        body = {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
        await send_json(send, 200, orjson.dumps(body))

    async def _items(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, conversation_id: str
    ) -> None:
        query = query_of(scope)
        _, stored = await self._load(conversation_id, tenant)
        custom = custom_call_ids(stored)
        items = [item for message in stored for item in to_items(message, custom)]
        page = paginate(items, query, "asc", "this conversation")
        await send_json(send, 200, orjson.dumps(page))

    async def _add_items(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, conversation_id: str
    ) -> None:
        _check_id(conversation_id)
        body = await self._body(scope, receive)
        if "items" not in body:
            raise InvalidRequest("Missing required parameter: 'items'.", param="items")
        messages = from_items(body["items"])
        await self._conversations.add(conversation_id, tenant, messages)  # 404 if none
        _, stored = await self._load(conversation_id, tenant)
        custom = custom_call_ids(stored)
        added = (
            [item for message in stored[-len(messages) :] for item in to_items(message, custom)]
            if messages
            else []
        )
        await send_json(send, 200, orjson.dumps(page_of(added, False)))

    async def _item(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        tenant: str,
        conversation_id: str,
        item_id: str,
    ) -> None:
        _, stored = await self._load(conversation_id, tenant)
        custom = custom_call_ids(stored)
        for message in stored:
            for item in to_items(message, custom):
                if item["id"] == item_id:
                    await send_json(send, 200, orjson.dumps(item))
                    return
        raise NotFound(f"No item found with id '{item_id}'.", code="item_not_found")


def _check_id(conversation_id: str) -> None:
    """An id that cannot exist (a '/' or a newline in it, ...) is not found."""
    if not ID_PATTERN.fullmatch(conversation_id):
        raise not_found(conversation_id)
