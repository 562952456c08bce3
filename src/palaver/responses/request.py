"""A Responses API request, validated and translated to the Chat Completions call it becomes.

``parse_response_request`` checks the body as OpenAI does (unknown fields, types, ranges; hosted
tools, ``background`` and file inputs are refused by name, never silently ignored) and returns a
``Translation``: the chat parameters, the request's input and instructions as chat messages, and
the settings a response object echoes back. No I/O.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from palaver.conversations.items import from_items
from palaver.errors import InvalidRequest
from palaver.protocol import (
    ID_REGEX,
    Json,
    Message,
    describe_validation_error,
    parse_json_object,
)

ID_PATTERN = ID_REGEX
_FUNCTION_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_SCHEMA_NAME = re.compile(r"[A-Za-z0-9_-]{1,64}")
_ITEM_ID = re.compile(ID_REGEX)


class ConversationRef(Struct, forbid_unknown_fields=True):
    id: Annotated[str, Meta(pattern=ID_PATTERN)]


class TextParam(Struct, forbid_unknown_fields=True):
    format: dict[str, Any] | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningParam(Struct, forbid_unknown_fields=True):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


class ResponseRequest(Struct, forbid_unknown_fields=True):
    """The fields of ``POST /v1/responses``; an unknown one is a 400 naming it, as at OpenAI."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    input: str | list[Any] | None = None
    instructions: str | list[Any] | None = None
    previous_response_id: Annotated[str, Meta(pattern=ID_PATTERN)] | None = None
    conversation: Annotated[str, Meta(pattern=ID_PATTERN)] | ConversationRef | None = None
    store: bool | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    text: TextParam | None = None
    max_output_tokens: Annotated[int, Meta(ge=16)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    reasoning: ReasoningParam | None = None
    metadata: (
        dict[Annotated[str, Meta(max_length=64)], Annotated[str, Meta(max_length=512)]] | None
    ) = None
    user: str | None = None
    safety_identifier: Annotated[str, Meta(max_length=64)] | None = None
    prompt_cache_key: str | None = None
    prompt_cache_retention: Literal["in_memory", "24h"] | None = None
    service_tier: Literal["auto", "default", "flex", "scale", "priority"] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    include: list[str] | None = None
    background: bool | None = None
    max_tool_calls: Annotated[int, Meta(ge=1)] | None = None
    # Known to OpenAI, not offered by palaver: a 400 when set.
    prompt: Any = None
    context_management: Any = None
    moderation: Any = None
    prompt_cache_options: Any = None

    @property
    def conversation_id(self) -> str | None:
        conversation = self.conversation
        return conversation.id if isinstance(conversation, ConversationRef) else conversation


@dataclass(slots=True)
class Translation:
    request: ResponseRequest
    payload: Json  # the chat parameters, less ``messages`` (the pipeline puts them in)
    new: list[Message]  # the request's input, as chat messages
    instructions: list[Message]  # for this response only: sent first, never stored
    settings: Json  # what a response object echoes of the request
    # The input, when it holds ``item_reference`` items: ``new`` is filled in once the
    # stage has looked them up (they name items of stored responses).
    referring: list[Any] | None = None


_UNSUPPORTED = ("prompt", "context_management", "moderation", "prompt_cache_options")
# ``include`` values with nothing to add (no hosted tool, no encrypted reasoning here).
_INCLUDES = frozenset(
    {"message.output_text.logprobs", "reasoning.encrypted_content", "message.input_image.image_url"}
)
_CHAT_PASSTHROUGH = (
    "temperature",
    "top_p",
    "user",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "service_tier",
)


def _invalid(message: str, param: str) -> InvalidRequest:
    return InvalidRequest(message, param=param)


def _name(value: Any, param: str, pattern: re.Pattern[str] = _FUNCTION_NAME) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _invalid(
            f"Invalid '{param}': expected a name of 1 to 64 letters, digits, '_', '.' or '-'.",
            param,
        )
    return value


def _optional(tool: Json, key: str, kinds: type | tuple[type, ...], param: str) -> Any:
    value = tool.get(key)
    if value is not None and not isinstance(value, kinds):
        raise _invalid(f"Invalid '{param}.{key}': wrong type.", f"{param}.{key}")
    return value


def _tool(tool: Any, param: str) -> tuple[Json, Json]:
    """A Responses tool -> (the chat tool, the tool as a response echoes it)."""
    if not isinstance(tool, dict):
        raise _invalid(f"Invalid '{param}': expected an object.", param)
    kind = tool.get("type")
    if kind == "function":
        name = _name(tool.get("name"), f"{param}.name")
        description = _optional(tool, "description", str, param)
        parameters = _optional(tool, "parameters", dict, param)
        strict = _optional(tool, "strict", bool, param)
        function: Json = {"name": name}
        if description is not None:
            function["description"] = description
        if parameters is not None:
            function["parameters"] = parameters
        if strict is not None:
            function["strict"] = strict
        echo = {
            "type": "function",
            "name": name,
            "description": description,
            "parameters": parameters,
            "strict": strict,
        }
        return {"type": "function", "function": function}, echo
    if kind == "custom":
        name = _name(tool.get("name"), f"{param}.name")
        custom: Json = {"name": name}
        for key, kinds in (("description", str), ("format", dict)):
            value = _optional(tool, key, kinds, param)
            if value is not None:
                custom[key] = value
        return {"type": "custom", "custom": custom}, {"type": "custom", **custom}
    if isinstance(kind, str):
        raise _invalid(
            f"The tool type '{kind}' is not supported: palaver relays the model to any "
            "provider and runs no hosted tools (web search, file search, code interpreter, "
            "...). Use function or custom tools.",
            f"{param}.type",
        )
    raise _invalid(f"Missing required parameter: '{param}.type'.", f"{param}.type")


def _tool_choice(choice: Any) -> Any:
    """``tool_choice`` in its chat shape."""
    if isinstance(choice, str):
        if choice not in ("none", "auto", "required"):
            raise _invalid(
                "Invalid 'tool_choice': expected 'none', 'auto', 'required' or an object.",
                "tool_choice",
            )
        return choice
    assert isinstance(choice, dict)
    kind = choice.get("type")
    if kind in ("function", "custom"):
        name = _name(choice.get("name"), "tool_choice.name")
        return {"type": kind, kind: {"name": name}}
    if kind == "allowed_tools":
        mode = choice.get("mode")
        tools = choice.get("tools")
        if mode not in ("auto", "required") or not isinstance(tools, list):
            raise _invalid(
                "Invalid 'tool_choice': allowed_tools needs a mode ('auto' or 'required') and "
                "a list of tools.",
                "tool_choice",
            )
        allowed = []
        for index, tool in enumerate(tools):
            where = f"tool_choice.tools[{index}]"
            tool_kind = tool.get("type") if isinstance(tool, dict) else None
            if tool_kind not in ("function", "custom"):
                raise _invalid(f"Invalid '{where}': only function and custom tools.", where)
            allowed.append({"type": tool_kind, tool_kind: {"name": _name(tool.get("name"), where)}})
        return {"type": "allowed_tools", "allowed_tools": {"mode": mode, "tools": allowed}}
    raise _invalid(
        f"The tool_choice type {kind!r} is not supported: palaver runs no hosted tools.",
        "tool_choice",
    )


def _response_format(text_format: Json) -> Json | None:
    """``text.format`` as the chat ``response_format`` (None: plain text, sent as nothing)."""
    kind = text_format.get("type")
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind == "json_schema":
        schema = text_format.get("schema")
        if not isinstance(schema, dict):
            raise _invalid(
                "Missing required parameter: 'text.format.schema'.", "text.format.schema"
            )
        spec: Json = {"name": _name(text_format.get("name"), "text.format.name", _SCHEMA_NAME)}
        spec["schema"] = schema
        for key, kinds in (("description", str), ("strict", bool)):
            value = _optional(text_format, key, kinds, "text.format")
            if value is not None:
                spec[key] = value
        return {"type": "json_schema", "json_schema": spec}
    raise _invalid(
        "Invalid 'text.format.type': expected 'text', 'json_object' or 'json_schema'.",
        "text.format.type",
    )


def _references(items: list[Any]) -> bool:
    """Whether ``items`` refer to stored items; each reference's id is checked here."""
    found = False
    for index, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "item_reference":
            item_id = item.get("id")
            if not isinstance(item_id, str) or not _ITEM_ID.fullmatch(item_id):
                raise _invalid(
                    f"Invalid 'input[{index}].id': expected the id of an item.",
                    f"input[{index}].id",
                )
            found = True
    return found


def _input(request: ResponseRequest) -> list[Message] | None:
    """The input as chat messages; None when it refers to stored items (translated once they
    are looked up, by ``input_messages``)."""
    value = request.input
    if value is None:
        if request.previous_response_id is None and request.conversation is None:
            raise _invalid("Missing required parameter: 'input'.", "input")
        return []
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if _references(value):
        return None
    return input_messages(value)


def input_messages(items: list[Any]) -> list[Message]:
    """The chat messages of a request's input items (references already resolved)."""
    return from_items(items, "input", limit=None, files=False)


def _instructions(request: ResponseRequest) -> list[Message]:
    value = request.instructions
    if value is None or value == "":
        return []
    if isinstance(value, str):
        # "system" rather than "developer": every OpenAI-compatible provider knows it.
        return [{"role": "system", "content": value}]
    return from_items(value, "instructions", limit=None, files=False)


def _check_supported(request: ResponseRequest) -> None:
    for field in _UNSUPPORTED:
        if getattr(request, field) is not None:
            raise _invalid(f"The parameter '{field}' is not supported by palaver.", field)
    if request.background:
        raise _invalid(
            "Background responses are not supported: palaver answers while the request is open.",
            "background",
        )
    if request.conversation is not None and request.previous_response_id is not None:
        raise _invalid(
            "Use 'conversation' or 'previous_response_id', not both.", "previous_response_id"
        )
    for index, value in enumerate(request.include or ()):
        if value not in _INCLUDES:
            raise _invalid(
                f"The include value {value!r} is not supported: palaver runs no hosted tools.",
                f"include[{index}]",
            )


_UNKNOWN = re.compile(r"unknown field '(?P<field>[^']*)'")


def _refused(error: msgspec.ValidationError) -> InvalidRequest:
    """OpenAI's words for a body that does not fit the request's fields."""
    message, param = describe_validation_error(error)
    unknown = _UNKNOWN.search(message)
    if unknown is not None:
        name = unknown.group("field")
        param = f"{param}.{name}" if param else name
        return InvalidRequest(
            f"Unknown parameter: '{param}'.", param=param, code="unknown_parameter"
        )
    if param is None:
        return InvalidRequest(message, param=None)
    return InvalidRequest(f"Invalid '{param}': {message}", param=param)


def parse_response_request(body: bytes) -> Translation:
    raw = parse_json_object(body)
    try:
        request = msgspec.convert(raw, ResponseRequest)
    except msgspec.ValidationError as exc:
        raise _refused(exc) from None
    _check_supported(request)
    payload: Json = {"model": request.model}
    for field in _CHAT_PASSTHROUGH:
        value = getattr(request, field)
        if value is not None:
            payload[field] = value
    echoed_tools: list[Json] = []
    if request.tools:
        chat_tools = []
        for index, tool in enumerate(request.tools):
            chat_tool, echo = _tool(tool, f"tools[{index}]")
            chat_tools.append(chat_tool)
            echoed_tools.append(echo)
        payload["tools"] = chat_tools
        if request.parallel_tool_calls is not None:
            payload["parallel_tool_calls"] = request.parallel_tool_calls
    if request.tool_choice is not None:
        payload["tool_choice"] = _tool_choice(request.tool_choice)
    text = request.text or TextParam()
    text_format = text.format if text.format is not None else {"type": "text"}
    response_format = _response_format(text_format)
    if response_format is not None:
        payload["response_format"] = response_format
    if text.verbosity is not None:
        payload["verbosity"] = text.verbosity
    if request.max_output_tokens is not None:
        payload["max_completion_tokens"] = request.max_output_tokens
    reasoning = request.reasoning or ReasoningParam()
    if reasoning.effort is not None:
        payload["reasoning_effort"] = reasoning.effort
    if request.top_logprobs or "message.output_text.logprobs" in (request.include or ()):
        payload["logprobs"] = True
        if request.top_logprobs:
            payload["top_logprobs"] = request.top_logprobs
    if request.stream:
        payload["stream"] = True
        payload["stream_options"] = {"include_usage": True}
    conversation = request.conversation_id
    settings: Json = {
        "instructions": request.instructions,
        "max_output_tokens": request.max_output_tokens,
        "max_tool_calls": request.max_tool_calls,
        "model": request.model,
        "parallel_tool_calls": request.parallel_tool_calls is not False,
        "previous_response_id": request.previous_response_id,
        "conversation": {"id": conversation} if conversation is not None else None,
        "reasoning": {"effort": reasoning.effort, "summary": reasoning.summary},
        "service_tier": request.service_tier or "default",
        "store": request.store is not False,
        "temperature": request.temperature if request.temperature is not None else 1.0,
        "text": {"format": text_format, "verbosity": text.verbosity or "medium"},
        "tool_choice": request.tool_choice if request.tool_choice is not None else "auto",
        "tools": echoed_tools,
        "top_logprobs": request.top_logprobs or 0,
        "top_p": request.top_p if request.top_p is not None else 1.0,
        "truncation": request.truncation or "disabled",
        "metadata": request.metadata or {},
        "background": False,
    }
    # Echoed when given (the spec has them as strings, not null).
    for name in ("user", "safety_identifier", "prompt_cache_key"):
        value = getattr(request, name)
        if value is not None:
            settings[name] = value
    new = _input(request)
    instructions = _instructions(request)
    if new is None:
        referring = request.input if isinstance(request.input, list) else None
        return Translation(request, payload, [], instructions, settings, referring=referring)
    return Translation(request, payload, new, instructions, settings)
