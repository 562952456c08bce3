"""OpenAI Chat Completions wire shapes: request validation and response builders. No I/O.

The request is validated against typed structs (msgspec, which reports the path of the
offending field), while the JSON object the client sent is what travels upstream, so that
parameters palaver does not know, and fields inside messages it does not use, reach the
provider unchanged.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import msgspec
import orjson
from msgspec import Meta, Struct

from palaver.errors import InvalidRequest

Json = dict[str, Any]
Message = dict[str, Any]

# --- content parts ----------------------------------------------------------------------------


class TextPart(Struct, tag_field="type", tag="text"):
    text: str


class ImageURL(Struct):
    url: Annotated[str, Meta(min_length=1)]
    detail: Literal["auto", "low", "high"] | None = None


class ImagePart(Struct, tag_field="type", tag="image_url"):
    image_url: ImageURL


class InputAudio(Struct):
    data: str
    format: str


class AudioPart(Struct, tag_field="type", tag="input_audio"):
    input_audio: InputAudio


class FileRef(Struct):
    file_data: str | None = None
    file_id: str | None = None
    filename: str | None = None


class FilePart(Struct, tag_field="type", tag="file"):
    file: FileRef


class RefusalPart(Struct, tag_field="type", tag="refusal"):
    refusal: str


UserPart = TextPart | ImagePart | AudioPart | FilePart
AssistantPart = TextPart | RefusalPart

# --- messages -----------------------------------------------------------------------------------


class FunctionCall(Struct):
    name: str
    arguments: str


class FunctionToolCall(Struct, tag_field="type", tag="function"):
    id: Annotated[str, Meta(min_length=1)]
    function: FunctionCall


class CustomCall(Struct):
    name: str
    input: str


class CustomToolCall(Struct, tag_field="type", tag="custom"):
    id: Annotated[str, Meta(min_length=1)]
    custom: CustomCall


ToolCall = FunctionToolCall | CustomToolCall


class SystemMessage(Struct, tag_field="role", tag="system"):
    content: str | Annotated[list[TextPart], Meta(min_length=1)]
    name: str | None = None


class DeveloperMessage(Struct, tag_field="role", tag="developer"):
    content: str | Annotated[list[TextPart], Meta(min_length=1)]
    name: str | None = None


class UserMessage(Struct, tag_field="role", tag="user"):
    content: str | Annotated[list[UserPart], Meta(min_length=1)]
    name: str | None = None


class AssistantMessage(Struct, tag_field="role", tag="assistant"):
    content: str | list[AssistantPart] | None = None
    tool_calls: list[ToolCall] | None = None
    function_call: FunctionCall | None = None
    refusal: str | None = None
    name: str | None = None


class ToolMessage(Struct, tag_field="role", tag="tool"):
    content: str | Annotated[list[TextPart], Meta(min_length=1)]
    tool_call_id: Annotated[str, Meta(min_length=1)]


class FunctionMessage(Struct, tag_field="role", tag="function"):
    name: str
    content: str | None = None


AnyMessage = (
    SystemMessage
    | DeveloperMessage
    | UserMessage
    | AssistantMessage
    | ToolMessage
    | FunctionMessage
)

# --- tools and formats --------------------------------------------------------------------------


class FunctionDefinition(Struct):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class FunctionTool(Struct, tag_field="type", tag="function"):
    function: FunctionDefinition


class CustomTool(Struct, tag_field="type", tag="custom"):
    custom: dict[str, Any]


class JsonSchemaFormat(Struct):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_-]{1,64}\Z")]
    schema: dict[str, Any] | None = None
    description: str | None = None
    strict: bool | None = None


class TextFormat(Struct, tag_field="type", tag="text"):
    pass


class JsonObjectFormat(Struct, tag_field="type", tag="json_object"):
    pass


class JsonSchemaResponseFormat(Struct, tag_field="type", tag="json_schema"):
    json_schema: JsonSchemaFormat


class StreamOptions(Struct):
    include_usage: bool | None = None
    include_obfuscation: bool | None = None


# msgspec searches a pattern; \Z, unlike $, does not match before a final newline.
ID_REGEX = r"^[A-Za-z0-9_-]{1,128}\Z"
ConversationId = Annotated[str, Meta(pattern=ID_REGEX)]
Penalty = Annotated[float, Meta(ge=-2.0, le=2.0)]


class ChatRequest(Struct):
    """The fields palaver validates; everything else is forwarded as the client sent it."""

    model: Annotated[str, Meta(min_length=1, max_length=256)]
    messages: Annotated[list[AnyMessage], Meta(min_length=1)]
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    n: Annotated[int, Meta(ge=1, le=128)] | None = None
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    top_p: Annotated[float, Meta(ge=0.0, le=1.0)] | None = None
    max_tokens: Annotated[int, Meta(ge=1)] | None = None
    max_completion_tokens: Annotated[int, Meta(ge=1)] | None = None
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    logprobs: bool | None = None
    top_logprobs: Annotated[int, Meta(ge=0, le=20)] | None = None
    logit_bias: dict[str, Annotated[float, Meta(ge=-100, le=100)]] | None = None
    stop: str | Annotated[list[str], Meta(max_length=4)] | None = None
    seed: int | None = None
    tools: list[FunctionTool | CustomTool] | None = None
    tool_choice: Literal["none", "auto", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: TextFormat | JsonObjectFormat | JsonSchemaResponseFormat | None = None
    user: str | None = None
    metadata: dict[str, str] | None = None
    # palaver's extension: the conversation this request continues (never forwarded)
    conversation: ConversationId | None = None


EXTENSION_FIELDS = ("conversation",)

_AT = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MISSING = re.compile(r"missing required field `(?P<field>[^`]+)`")
# Patterns said in words: a client should not have to read a regular expression.
_REGEX = re.compile(r"Expected `str` matching regex '(?P<regex>.*)'$")
_PATTERN_WORDS = {repr(ID_REGEX)[1:-1]: "Expected an id of 1 to 128 letters, digits, '_' or '-'"}


def describe_validation_error(error: msgspec.ValidationError) -> tuple[str, str | None]:
    """Split msgspec's "Expected `int`, got `str` - at `$.n`" into ("...", "n")."""
    text = str(error)
    match = _AT.search(text)
    path = match.group("path").lstrip(".").split("[...]")[0] if match else ""
    if match:
        text = text[: match.start()]
    missing = _MISSING.search(text)
    if missing:
        field = missing.group("field")
        path = f"{path}.{field}" if path else field
    regex = _REGEX.match(text)
    if regex is not None:
        text = _PATTERN_WORDS.get(regex.group("regex"), "Expected a string of another form")
    return text.replace("`", "'"), path or None


# orjson reads 1024 levels of arrays and objects but writes only 254, and palaver writes what
# clients send (upstream, cache keys, stores): a body nested deeper than that is refused when it
# is read. A few levels are kept for the envelopes palaver puts around client JSON.
MAX_DEPTH = 250


def parse_json_object(body: bytes) -> Json:
    """The JSON object of a request body; 400 ``invalid_json`` for anything else."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidRequest(
            f"We could not parse the JSON body of your request: {exc}", code="invalid_json"
        ) from None
    if not isinstance(raw, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    if len(body) > 2 * MAX_DEPTH:  # a shorter body cannot be nested that deep
        try:
            orjson.dumps([[[[raw]]]])  # the body plus 254 - MAX_DEPTH levels must be writable
        except orjson.JSONEncodeError:
            raise InvalidRequest(
                f"The request body is nested too deeply: at most {MAX_DEPTH} levels of arrays "
                "and objects are accepted.",
                code="invalid_json",
            ) from None
    return raw


def _same(param: str) -> str:
    return param


def _check_assistants(messages: list[AnyMessage], locate: Callable[[str], str] = _same) -> None:
    for index, message in enumerate(messages):
        if (
            isinstance(message, AssistantMessage)
            and message.content is None
            and not message.tool_calls
            and message.function_call is None
        ):
            raise InvalidRequest(
                "An assistant message needs 'content' or 'tool_calls'.",
                param=locate(f"messages[{index}].content"),
            )


def validate_messages(messages: list[Message], locate: Callable[[str], str] = _same) -> None:
    """Reject what a chat request would reject in ``messages``. ``locate`` turns the place of
    a problem (``messages[i]...``) into the place where the client put it."""
    try:
        typed = msgspec.convert(messages, list[AnyMessage])
    except msgspec.ValidationError as exc:
        message, param = describe_validation_error(exc)
        param = locate(f"messages{param}" if param else "messages")
        raise InvalidRequest(f"Invalid '{param}': {message}", param=param) from None
    _check_assistants(typed, locate)


def parse_chat_request(body: bytes) -> tuple[ChatRequest, Json]:
    """Validate a request body; return the typed view and the JSON object to forward."""
    raw = parse_json_object(body)
    try:
        request = msgspec.convert(raw, ChatRequest)
    except msgspec.ValidationError as exc:
        message, param = describe_validation_error(exc)
        raise InvalidRequest(f"Invalid '{param}': {message}", param=param) from None
    _check_assistants(request.messages)
    for field in EXTENSION_FIELDS:
        raw.pop(field, None)
    return request, raw


# --- responses ----------------------------------------------------------------------------------


def completion_id() -> str:
    # Unique, not secret: the fast generator will do (no system call per response).
    return f"chatcmpl-{random.getrandbits(96):024x}"


def now() -> int:
    return int(time.time())


def text_of(content: Any) -> str:
    """The text of a message's content, whether a string or a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict)).strip()
    return ""


def model_list(models: list[tuple[str, str]]) -> Json:
    return {
        "object": "list",
        "data": [
            {"id": model, "object": "model", "created": 0, "owned_by": owner}
            for model, owner in models
        ],
    }
