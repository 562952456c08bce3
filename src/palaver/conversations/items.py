"""Chat messages <-> OpenAI Conversations API items.

A stored chat message becomes one item or several: a ``message`` item for its text, one
``function_call`` (or ``custom_tool_call``) item per tool call of an assistant message, a
``function_call_output`` (or ``custom_tool_call_output``) item for a tool message. Item ids
derive from the stored message's id, so they are stable.

Items a client posts become chat messages, checked as a chat request's messages are: what
reaches the upstream on a later turn went through the same validation either way.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from palaver.errors import InvalidRequest
from palaver.protocol import Json, Message, text_of, validate_messages
from palaver.stores.base import ConversationInfo, StoredMessage

_INPUT_ROLES = frozenset({"user", "system", "developer"})


def conversation_object(info: ConversationInfo) -> Json:
    return {
        "id": info.id,
        "object": "conversation",
        "created_at": int(info.created_at),
        "metadata": info.metadata,
        "updated_at": int(info.updated_at),
        "message_count": info.message_count,
    }


def _parts(content: Any, role: str) -> list[Json]:
    text_type = "input_text" if role in _INPUT_ROLES else "output_text"

    def text(value: str) -> Json:
        part: Json = {"type": text_type, "text": value}
        if text_type == "output_text":
            part["annotations"] = []
            part["logprobs"] = []
        return part

    if content is None:
        return []
    if isinstance(content, str):
        return [text(content)]
    parts: list[Json] = []
    for part in content if isinstance(content, list) else ():
        kind = part.get("type")
        if kind == "text":
            parts.append(text(str(part.get("text", ""))))
        elif kind == "image_url":
            image = part.get("image_url") or {}
            parts.append(
                {
                    "type": "input_image",
                    "image_url": image.get("url"),
                    "detail": image.get("detail") or "auto",
                }
            )
        elif kind == "refusal":
            parts.append({"type": "refusal", "refusal": part.get("refusal", "")})
    return parts


def custom_call_ids(stored: Sequence[StoredMessage]) -> frozenset[str]:
    """The ids of the custom tool calls in a conversation: their results are custom items."""
    return frozenset(
        str(call.get("id"))
        for entry in stored
        for call in entry.message.get("tool_calls") or ()
        if isinstance(call, dict) and call.get("type") == "custom"
    )


def _call_item(call: Any, index: int, base: str) -> Json:
    call = call if isinstance(call, dict) else {}
    if call.get("type") == "custom":
        custom = call.get("custom") or {}
        return {
            "type": "custom_tool_call",
            "id": f"ctc_{index}_{base}",
            "call_id": call.get("id", ""),
            "name": custom.get("name", ""),
            "input": custom.get("input", ""),
        }
    function = call.get("function") or {}
    return {
        "type": "function_call",
        "id": f"fc_{index}_{base}",
        "call_id": call.get("id", ""),
        "name": function.get("name", ""),
        "arguments": function.get("arguments", ""),
        "status": "completed",
    }


def to_items(stored: StoredMessage, custom_calls: frozenset[str] = frozenset()) -> list[Json]:
    """The items of one stored message; ``custom_calls`` as ``custom_call_ids`` gives them."""
    message = stored.message
    role = str(message.get("role", "user"))
    base = stored.item_id
    if role == "tool":
        call_id = message.get("tool_call_id", "")
        output = text_of(message.get("content"))
        if call_id in custom_calls:
            return [
                {
                    "type": "custom_tool_call_output",
                    "id": "ctco_" + base,
                    "call_id": call_id,
                    "output": output,
                }
            ]
        return [
            {
                "type": "function_call_output",
                "id": "fco_" + base,
                "call_id": call_id,
                "output": output,
                "status": "completed",
            }
        ]
    items: list[Json] = []
    parts = _parts(message.get("content"), role)
    if parts or not message.get("tool_calls"):
        items.append(
            {"type": "message", "id": base, "status": "completed", "role": role, "content": parts}
        )
    items.extend(
        _call_item(call, index, base) for index, call in enumerate(message.get("tool_calls") or ())
    )
    return items


# --- items a client posts -> chat messages ----------------------------------------------------

MAX_ITEMS = 20  # per request, as OpenAI's Conversations API
_ROLES = ("user", "assistant", "system", "developer")
_TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


def _string(value: Any, param: str, *, empty: bool = True) -> str:
    if not isinstance(value, str):
        raise InvalidRequest(f"Invalid '{param}': expected a string.", param=param)
    if not empty and not value:
        raise InvalidRequest(f"Invalid '{param}': expected a non-empty string.", param=param)
    return value


def _part(part: Any, param: str, files: bool = True) -> Json:
    """One content part of an item as the chat part it stands for."""
    if not isinstance(part, dict):
        raise InvalidRequest(f"Invalid '{param}': expected an object.", param=param)
    kind = part.get("type")
    if kind in _TEXT_PARTS:
        return {"type": "text", "text": _string(part.get("text"), f"{param}.text")}
    if kind == "input_image":
        if part.get("image_url") is None and part.get("file_id") is not None:
            raise InvalidRequest(
                "Images are accepted by 'image_url' only, not by 'file_id'.",
                param=f"{param}.image_url",
            )
        image: Json = {"url": _string(part.get("image_url"), f"{param}.image_url", empty=False)}
        if part.get("detail") is not None:
            image["detail"] = _string(part["detail"], f"{param}.detail")
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        if not files:
            raise InvalidRequest(
                "File inputs ('input_file') are not supported: send the text or an image.",
                param=f"{param}.type",
            )
        file = {
            key: _string(part[key], f"{param}.{key}")
            for key in ("file_data", "file_id", "filename")
            if part.get(key) is not None
        }
        return {"type": "file", "file": file}
    if kind == "refusal":
        return {"type": "refusal", "refusal": _string(part.get("refusal"), f"{param}.refusal")}
    raise InvalidRequest(f"Unsupported content part type {kind!r}.", param=f"{param}.type")


def _content_of(content: Any, param: str, files: bool = True) -> str | list[Json]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest(
            f"Invalid '{param}': expected a string or a list of parts.", param=param
        )
    parts = [_part(part, f"{param}[{index}]", files) for index, part in enumerate(content)]
    if all(p["type"] == "text" for p in parts):  # plain text is stored as a string
        return "".join(str(p["text"]) for p in parts)
    return parts


def _tool_call(item: Json, where: str, custom: bool) -> Json:
    call_id = _string(item.get("call_id"), f"{where}.call_id", empty=False)
    name = _string(item.get("name"), f"{where}.name", empty=False)
    if custom:
        text = _string(item.get("input"), f"{where}.input")
        return {"id": call_id, "type": "custom", "custom": {"name": name, "input": text}}
    arguments = _string(item.get("arguments"), f"{where}.arguments")
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}


def _message_of(item: Json, kind: str, where: str, files: bool) -> Message:
    """The chat message of one item that is not a tool call."""
    if kind == "message":
        role = item.get("role")
        if role not in _ROLES:
            raise InvalidRequest(
                f"Invalid '{where}.role': expected one of {', '.join(_ROLES)}.",
                param=f"{where}.role",
            )
        content = _content_of(item.get("content"), f"{where}.content", files)
        return {"role": role, "content": content}
    if kind in ("function_call_output", "custom_tool_call_output"):
        return {
            "role": "tool",
            "tool_call_id": _string(item.get("call_id"), f"{where}.call_id", empty=False),
            "content": _content_of(item.get("output"), f"{where}.output", files),
        }
    raise InvalidRequest(f"Unsupported item type {kind!r}.", param=f"{where}.type")


# A chat message's fields -> the item's, for the problems the chat validation finds.
_PART_FIELDS = ((".image_url.url", ".image_url"), (".image_url.detail", ".detail"), (".file.", "."))
_TOOL_FIELDS = ((".tool_call_id", ".call_id"), (".content", ".output"))
_CALL_FIELDS = {
    ".id": ".call_id",
    ".function": "",
    ".function.name": ".name",
    ".function.arguments": ".arguments",
    ".custom": "",
    ".custom.name": ".name",
    ".custom.input": ".input",
}
_MESSAGE_PATH = re.compile(r"^messages\[(\d+)\](.*)$")
_CALL_PATH = re.compile(r"^\.tool_calls\[(\d+)\](.*)$")


class _Locator:
    """Maps ``messages[i]...`` to the posted item it came from: ``items[k]...``."""

    def __init__(self, messages: list[Message], origins: list[list[int]], items: str) -> None:
        self._messages = messages
        self._origins = origins  # per message: its item; per tool call: the call's item
        self._items = items

    def __call__(self, param: str) -> str:
        found = _MESSAGE_PATH.match(param)
        if found is None:
            return self._items
        index, rest = int(found.group(1)), found.group(2)
        origin = self._origins[index]
        call = _CALL_PATH.match(rest)
        if call is not None:
            item = origin[min(int(call.group(1)), len(origin) - 1)]
            inner = call.group(2)
            return f"{self._items}[{item}]{_CALL_FIELDS.get(inner, inner)}"
        if self._messages[index]["role"] == "tool":
            for old, new in _TOOL_FIELDS:
                rest = rest.replace(old, new, 1) if rest.startswith(old) else rest
        for old, new in _PART_FIELDS:
            rest = rest.replace(old, new)
        return f"{self._items}[{origin[0]}]{rest}"


def from_items(
    items: Any, param: str = "items", *, limit: int | None = MAX_ITEMS, files: bool = True
) -> list[Message]:
    """Chat messages for the items a client posts (message, function_call, ...output), each
    checked as strictly as the chat request that would carry it. ``limit``: how many items
    one request may post; ``files``: whether ``input_file`` parts are accepted."""
    if not isinstance(items, list):
        raise InvalidRequest(f"Invalid '{param}': expected a list of items.", param=param)
    if limit is not None and len(items) > limit:
        raise InvalidRequest(
            f"Invalid '{param}': you may add up to {limit} items at a time.", param=param
        )
    messages: list[Message] = []
    origins: list[list[int]] = []  # per message: the item (per tool call: the items) it is from
    for index, item in enumerate(items):
        where = f"{param}[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"Invalid '{where}': expected an object.", param=where)
        kind = item.get("type", "message")
        if not isinstance(kind, str):
            raise InvalidRequest(
                f"Invalid '{where}.type': expected a string.", param=f"{where}.type"
            )
        if kind in ("function_call", "custom_tool_call"):
            call = _tool_call(item, where, kind == "custom_tool_call")
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant" and "tool_calls" in previous:
                previous["tool_calls"].append(call)
                origins[-1].append(index)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
                origins.append([index])
            continue
        messages.append(_message_of(item, kind, where, files))
        origins.append([index])
    validate_messages(messages, _Locator(messages, origins, param))
    return messages
