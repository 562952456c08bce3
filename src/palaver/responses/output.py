"""Response objects: ids, the skeleton a stream starts with, and a chat completion's answer as
a response's ``output`` items, ``usage`` and ``status``. No I/O.

Output item ids derive from the response id (``msg_<hex>``, ``fc_<hex>_<n>``), so the items a
stream announces and those of the stored response are the same items.
"""

from __future__ import annotations

import re
import time
from typing import Any

from palaver import ids
from palaver.protocol import Json, Message

_INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


def new_response_id() -> str:
    return "resp_" + ids.token_hex(24)


def message_item_id(response_id: str) -> str:
    return "msg_" + response_id.removeprefix("resp_")


def call_item_id(response_id: str, index: int, custom: bool = False) -> str:
    return f"{'ctc' if custom else 'fc'}_{response_id.removeprefix('resp_')}_{index}"


_ITEM_OWNER = re.compile(r"(?:msg_(?P<message>[0-9a-f]{48})|(?:fc|ctc)_(?P<call>[0-9a-f]{48})_\d+)")


def owner_of_item(item_id: str) -> str | None:
    """The id of the response whose output ``item_id`` is (None for another kind of id)."""
    found = _ITEM_OWNER.fullmatch(item_id)
    if found is None:
        return None
    return "resp_" + (found.group("message") or found.group("call"))


def skeleton(response_id: str, created_at: int, settings: Json, status: str) -> Json:
    """The response object before its output: what ``response.created`` carries."""
    return {
        "id": response_id,
        "object": "response",
        "created_at": created_at,
        "status": status,
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        **settings,
        "output": [],
    }


def text_part(text: str, logprobs: list[Any] | None = None) -> Json:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": logprobs or []}


def message_item(response_id: str, parts: list[Json], status: str = "completed") -> Json:
    return {
        "id": message_item_id(response_id),
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": parts,
    }


def call_item(response_id: str, index: int, call: Json, status: str = "completed") -> Json:
    """A chat tool call as a ``function_call`` (or ``custom_tool_call``) output item."""
    if call.get("type") == "custom":
        custom = call.get("custom") or {}
        return {
            "id": call_item_id(response_id, index, custom=True),
            "type": "custom_tool_call",
            "status": status,
            "call_id": call.get("id") or "",
            "name": custom.get("name") or "",
            "input": custom.get("input") or "",
        }
    function = call.get("function") or {}
    return {
        "id": call_item_id(response_id, index),
        "type": "function_call",
        "status": status,
        "call_id": call.get("id") or "",
        "name": function.get("name") or "",
        "arguments": function.get("arguments") or "",
    }


def output_of(response_id: str, message: Json, logprobs: list[Any] | None = None) -> list[Json]:
    """The output items of a chat answer: its text (or refusal) as a message, then one item a
    tool call."""
    items: list[Json] = []
    parts: list[Json] = []
    content = message.get("content")
    if isinstance(content, str) and content:
        parts.append(text_part(content, logprobs))
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    if parts or not message.get("tool_calls"):
        items.append(message_item(response_id, parts or [text_part("")]))
    for index, call in enumerate(message.get("tool_calls") or ()):
        if isinstance(call, dict):
            items.append(call_item(response_id, index, call))
    return items


def usage_of(usage: Any) -> Json | None:
    """Chat usage as Responses usage."""
    if not isinstance(usage, dict):
        return None
    prompt = int(usage.get("prompt_tokens") or 0)
    completion = int(usage.get("completion_tokens") or 0)
    prompt_details = usage.get("prompt_tokens_details") or {}
    completion_details = usage.get("completion_tokens_details") or {}
    return {
        "input_tokens": prompt,
        "input_tokens_details": {
            "cached_tokens": int(prompt_details.get("cached_tokens") or 0),
            "cache_write_tokens": int(prompt_details.get("cache_write_tokens") or 0),
        },
        "output_tokens": completion,
        "output_tokens_details": {
            "reasoning_tokens": int(completion_details.get("reasoning_tokens") or 0)
        },
        "total_tokens": int(usage.get("total_tokens") or prompt + completion),
    }


def finish(base: Json, completion: Json, output: list[Json] | None = None) -> Json:
    """The finished response: ``base`` (a skeleton) with the completion's output, usage and
    status; ``output`` when a stream already laid out the items."""
    choices = completion.get("choices") or [{}]
    choice = choices[0] if isinstance(choices[0], dict) else {}
    message = choice.get("message") if isinstance(choice.get("message"), dict) else {}
    assert isinstance(message, dict)
    logprobs = choice.get("logprobs") if isinstance(choice.get("logprobs"), dict) else None
    tokens = logprobs.get("content") if logprobs else None
    reason = _INCOMPLETE.get(str(choice.get("finish_reason")))
    response = {
        **base,
        "status": "incomplete" if reason else "completed",
        "completed_at": None if reason else int(time.time()),
        "incomplete_details": {"reason": reason} if reason else None,
        "output": output if output is not None else output_of(base["id"], message, tokens),
        "usage": usage_of(completion.get("usage")),
    }
    if completion.get("service_tier"):
        response["service_tier"] = completion["service_tier"]
    return response


def reply_messages(response: Json) -> list[Message]:
    """The chat message a response's output stands for (what a continuation sees)."""
    text: list[str] = []
    refusal: list[str] = []
    calls: list[Json] = []
    for item in response.get("output") or ():
        kind = item.get("type")
        if kind == "message":
            for part in item.get("content") or ():
                if part.get("type") == "output_text":
                    text.append(part.get("text") or "")
                elif part.get("type") == "refusal":
                    refusal.append(part.get("refusal") or "")
        elif kind == "function_call":
            function = {"name": item["name"], "arguments": item["arguments"]}
            calls.append({"id": item["call_id"], "type": "function", "function": function})
        elif kind == "custom_tool_call":
            custom = {"name": item["name"], "input": item["input"]}
            calls.append({"id": item["call_id"], "type": "custom", "custom": custom})
    message: Message = {
        "role": "assistant",
        "content": "".join(text) if text or not calls else None,
    }
    if calls:
        message["tool_calls"] = calls
    if refusal:
        message["refusal"] = "".join(refusal)
    return [message]
