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

from typing import Any
from urllib.parse import parse_qs

import orjson

from palaver.asgi import Receive, Scope, Send, read_body, send_json
from palaver.conversations import ID_PATTERN, Conversations, not_found
from palaver.errors import InvalidRequest, MethodNotAllowed, NotFound
from palaver.items import conversation_object, from_items, to_items
from palaver.protocol import Json
from palaver.stores import ConversationInfo, StoredMessage

MAX_METADATA = 16


def _query(scope: Scope) -> dict[str, str]:
    parsed = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return {key: values[-1] for key, values in parsed.items()}


def _limit(query: dict[str, str], default: int = 20) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    if not raw.isdigit() or not 1 <= int(raw) <= 100:
        raise InvalidRequest("'limit' must be an integer from 1 to 100.", param="limit")
    return int(raw)


def _metadata(body: Json) -> dict[str, str]:
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or len(metadata) > MAX_METADATA:
        raise InvalidRequest("'metadata' must be an object of at most 16 pairs.", param="metadata")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise InvalidRequest(
                "Metadata keys are strings up to 64 characters, values up to 512.",
                param=f"metadata.{key}",
            )
    return metadata


def _page(data: list[Json], has_more: bool) -> Json:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": has_more,
    }


class ConversationHandlers:
    def __init__(self, conversations: Conversations, max_body: int) -> None:
        self._conversations = conversations
        self._store = conversations.store
        self._max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        path: str = scope["path"]
        rest = path.split("/conversations", 1)[1].strip("/")
        parts = rest.split("/") if rest else []
        method: str = scope["method"]
        if parts and not ID_PATTERN.match(parts[0]):
            raise not_found(parts[0])
        route = (len(parts), parts[1] if len(parts) > 1 else None, method)
        if route == (0, None, "POST"):
            await self._create(scope, receive, send, tenant)
        elif route == (0, None, "GET"):
            await self._list(scope, send, tenant)
        elif route == (1, None, "GET"):
            await send_json(
                send, 200, orjson.dumps(conversation_object(await self._info(parts[0], tenant)))
            )
        elif route == (1, None, "POST"):
            await self._update(scope, receive, send, tenant, parts[0])
        elif route == (1, None, "DELETE"):
            await self._delete(send, tenant, parts[0])
        elif route[:2] == (2, "items") and method == "GET":
            await self._items(scope, send, tenant, parts[0])
        elif route[:2] == (2, "items") and method == "POST":
            await self._add_items(scope, receive, send, tenant, parts[0])
        elif route[:2] == (3, "items") and method == "GET":
            await self._item(send, tenant, parts[0], parts[2])
        elif len(parts) <= 1 or (len(parts) <= 3 and parts[1] == "items"):
            raise MethodNotAllowed(f"Method {method} is not allowed on {path}.")
        else:
            raise NotFound(f"Unknown request URL: {method} {path}.", code="unknown_url")

    async def _body(self, scope: Scope, receive: Receive) -> Json:
        raw = await read_body(scope, receive, self._max_body)
        if not raw.strip():
            return {}
        try:
            body: Any = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise InvalidRequest(
                f"We could not parse the JSON body of your request: {exc}"
            ) from None
        if not isinstance(body, dict):
            raise InvalidRequest("The request body must be a JSON object.")
        return body

    async def _load(
        self, conversation_id: str, tenant: str
    ) -> tuple[ConversationInfo, list[StoredMessage]]:
        snapshot = await self._store.load(conversation_id, tenant)
        if snapshot.info is None:
            raise not_found(conversation_id)
        return snapshot.info, snapshot.messages

    async def _info(self, conversation_id: str, tenant: str) -> ConversationInfo:
        return (await self._load(conversation_id, tenant))[0]

    async def _create(self, scope: Scope, receive: Receive, send: Send, tenant: str) -> None:
        body = await self._body(scope, receive)
        metadata = _metadata(body)
        messages = from_items(body.get("items") or [])
        info = await self._conversations.create(tenant, metadata, messages)
        await send_json(send, 200, orjson.dumps(conversation_object(info)))

    async def _list(self, scope: Scope, send: Send, tenant: str) -> None:
        query = _query(scope)
        infos, has_more = await self._store.list(tenant, _limit(query), query.get("after"))
        await send_json(
            send, 200, orjson.dumps(_page([conversation_object(i) for i in infos], has_more))
        )

    async def _update(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, conversation_id: str
    ) -> None:
        metadata = _metadata(await self._body(scope, receive))
        info = await self._store.set_metadata(conversation_id, tenant, metadata)
        if info is None:
            raise not_found(conversation_id)
        await send_json(send, 200, orjson.dumps(conversation_object(info)))

    async def _delete(self, send: Send, tenant: str, conversation_id: str) -> None:
        if not await self._store.delete(conversation_id, tenant):
            raise not_found(conversation_id)
        body = {"id": conversation_id, "object": "conversation.deleted", "deleted": True}
        await send_json(send, 200, orjson.dumps(body))

    async def _items(self, scope: Scope, send: Send, tenant: str, conversation_id: str) -> None:
        query = _query(scope)
        limit = _limit(query)
        order = query.get("order", "asc")
        if order not in ("asc", "desc"):
            raise InvalidRequest("'order' must be 'asc' or 'desc'.", param="order")
        _, stored = await self._load(conversation_id, tenant)
        items = [item for message in stored for item in to_items(message)]
        if order == "desc":
            items.reverse()
        after = query.get("after")
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise InvalidRequest(f"No item '{after}' in this conversation.", param="after")
            items = items[ids.index(after) + 1 :]
        await send_json(send, 200, orjson.dumps(_page(items[:limit], len(items) > limit)))

    async def _add_items(
        self, scope: Scope, receive: Receive, send: Send, tenant: str, conversation_id: str
    ) -> None:
        body = await self._body(scope, receive)
        if "items" not in body:
            raise InvalidRequest("Missing required parameter: 'items'.", param="items")
        messages = from_items(body["items"])
        await self._conversations.add(conversation_id, tenant, messages)  # 404 if none
        _, stored = await self._load(conversation_id, tenant)
        added = (
            [item for message in stored[-len(messages) :] for item in to_items(message)]
            if messages
            else []
        )
        await send_json(send, 200, orjson.dumps(_page(added, False)))

    async def _item(self, send: Send, tenant: str, conversation_id: str, item_id: str) -> None:
        _, stored = await self._load(conversation_id, tenant)
        for message in stored:
            for item in to_items(message):
                if item["id"] == item_id:
                    await send_json(send, 200, orjson.dumps(item))
                    return
        raise NotFound(f"No item found with id '{item_id}'.", code="item_not_found")
