"""Chat messages <-> OpenAI Conversations API items.

A stored chat message becomes one item or several: a ``message`` item for its text, one
``function_call`` item per tool call of an assistant message, a ``function_call_output`` item
for a tool message. Item ids derive from the stored message's id, so they are stable.
"""

from __future__ import annotations

from typing import Any

from palaver.errors import InvalidRequest
from palaver.protocol import Json, Message, text_of
from palaver.stores import ConversationInfo, StoredMessage

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


def to_items(stored: StoredMessage) -> list[Json]:
    message = stored.message
    role = str(message.get("role", "user"))
    base = stored.item_id
    if role == "tool":
        return [
            {
                "type": "function_call_output",
                "id": "fco_" + base,
                "call_id": message.get("tool_call_id", ""),
                "output": text_of(message.get("content")),
                "status": "completed",
            }
        ]
    items: list[Json] = []
    parts = _parts(message.get("content"), role)
    if parts or not message.get("tool_calls"):
        items.append(
            {"type": "message", "id": base, "status": "completed", "role": role, "content": parts}
        )
    for index, call in enumerate(message.get("tool_calls") or ()):
        function = call.get("function") or {}
        items.append(
            {
                "type": "function_call",
                "id": f"fc_{index}_{base}",
                "call_id": call.get("id", ""),
                "name": function.get("name", ""),
                "arguments": function.get("arguments", ""),
                "status": "completed",
            }
        )
    return items


def _content_of(content: Any, param: str) -> str | list[Json]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise InvalidRequest("Item content must be a string or a list of parts.", param=param)
    parts: list[Json] = []
    for index, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": str(part.get("text", ""))})
        elif kind == "input_image" and part.get("image_url"):
            parts.append({"type": "image_url", "image_url": {"url": part["image_url"]}})
        else:
            raise InvalidRequest(
                f"Unsupported content part type {kind!r}.", param=f"{param}[{index}].type"
            )
    if all(p["type"] == "text" for p in parts):
        return "".join(str(p["text"]) for p in parts)
    return parts


def from_items(items: Any, param: str = "items") -> list[Message]:
    """Chat messages for the items a client posts (message, function_call, ...output)."""
    if not isinstance(items, list):
        raise InvalidRequest("'items' must be a list.", param=param)
    messages: list[Message] = []
    for index, item in enumerate(items):
        where = f"{param}[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest("Each item must be an object.", param=where)
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise InvalidRequest(f"Invalid role {role!r}.", param=f"{where}.role")
            messages.append(
                {"role": role, "content": _content_of(item.get("content"), f"{where}.content")}
            )
        elif kind == "function_call":
            call = {
                "id": str(item.get("call_id", "")),
                "type": "function",
                "function": {
                    "name": str(item.get("name", "")),
                    "arguments": str(item.get("arguments", "")),
                },
            }
            previous = messages[-1] if messages else None
            if previous and previous["role"] == "assistant" and "tool_calls" in previous:
                previous["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": str(item.get("call_id", "")),
                    "content": output
                    if isinstance(output, str)
                    else _content_of(output, f"{where}.output"),
                }
            )
        else:
            raise InvalidRequest(f"Unsupported item type {kind!r}.", param=f"{where}.type")
    return messages
