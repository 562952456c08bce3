"""Counting a chat request's prompt tokens the way OpenAI bills them.

The rules are those of OpenAI's cookbook ("How to count tokens with tiktoken"), which match
the ``usage.prompt_tokens`` the API reports for gpt-4o, gpt-4o-mini, gpt-4 and gpt-3.5-turbo:

- every message costs 3 tokens, plus its role and content; a ``name`` costs its tokens plus 1;
- every reply is primed with 3 tokens (``<|start|>assistant<|message|>``);
- function tools: 7 tokens each (10 with ``cl100k_base``), ``name:description``, then for the
  parameters 3, and per property 3 plus ``name:type:description``, an enum -3 plus 3 and
  its tokens per value; 12 for the whole list.

What the cookbook does not give is estimated, and said so here:

- a tool call in an assistant message: its name and arguments, plus 3;
- a JSON schema beyond flat properties with a type and description: its JSON text;
- images, by OpenAI's tile rule for gpt-4o (``detail: low`` 85; otherwise fitted into
  2048x2048, the short side scaled down to 768, then 170 per 512-pixel tile plus 85), with the
  size read from a ``data:`` URL's PNG, GIF, JPEG or WebP header; an image palaver cannot see
  (an ``https`` URL) counts as 1024x1024, 765 tokens;
- audio and file parts: their text fields only (their data is not text).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import orjson
import tiktoken

from palaver.tokens.images import image_tokens

PER_MESSAGE = 3
PER_NAME = 1
REPLY_PRIMING = 3
PER_TOOL_CALL = 3

_SKIPPED_KEYS = frozenset({"data", "file_data", "image_url", "input_audio", "type"})


class Counter:
    """Token counts of messages and tools with one encoding."""

    __slots__ = ("_func_init", "encoding", "name")

    def __init__(self, encoding: tiktoken.Encoding) -> None:
        self.encoding = encoding
        self.name = encoding.name
        self._func_init = 10 if encoding.name == "cl100k_base" else 7

    def text(self, text: str) -> int:
        if not text:
            return 0
        return len(self.encoding.encode_ordinary(text))

    def message(self, message: dict[str, Any]) -> int:
        """What ``message`` adds to a prompt, its 3 tokens of framing included."""
        total = PER_MESSAGE
        role = message.get("role")
        if isinstance(role, str):
            total += self.text(role)
        total += self.content(message.get("content"))
        name = message.get("name")
        if isinstance(name, str) and name:
            total += self.text(name) + PER_NAME
        refusal = message.get("refusal")
        if isinstance(refusal, str):
            total += self.text(refusal)
        calls = message.get("tool_calls")
        if isinstance(calls, list):
            total += sum(self._call(call) for call in calls)
        return total

    def content(self, content: Any) -> int:
        if content is None:
            return 0
        if isinstance(content, str):
            return self.text(content)
        if isinstance(content, list):
            return sum(self._part(part) for part in content)
        return self.text(orjson.dumps(content).decode())

    def _part(self, part: Any) -> int:
        if not isinstance(part, dict):
            return self.content(part)
        kind = part.get("type")
        if kind in ("text", "input_text", "output_text", "refusal"):
            value = part.get("text", part.get("refusal"))
            return self.text(value) if isinstance(value, str) else 0
        if kind in ("image_url", "input_image"):
            image = part.get("image_url")
            if isinstance(image, dict):
                return image_tokens(image.get("url"), image.get("detail"))
            return image_tokens(image, part.get("detail"))
        return sum(
            self.text(value)
            for key, value in part.items()
            if key not in _SKIPPED_KEYS and isinstance(value, str)
        )

    def _call(self, call: Any) -> int:
        if not isinstance(call, dict):
            return 0
        body = call.get("function") or call.get("custom") or {}
        if not isinstance(body, dict):
            return PER_TOOL_CALL
        total = PER_TOOL_CALL
        for key in ("name", "arguments", "input"):
            value = body.get(key)
            if isinstance(value, str):
                total += self.text(value)
        return total

    def messages(self, messages: Iterable[dict[str, Any]]) -> int:
        """A whole prompt's messages, the reply priming included."""
        return sum(self.message(m) for m in messages) + REPLY_PRIMING

    def tools(self, tools: Any) -> int:
        """The tokens a request's ``tools`` add (0 for none)."""
        if not isinstance(tools, list) or not tools:
            return 0
        total = 0
        for tool in tools:
            if not isinstance(tool, dict):
                continue
            function = tool.get("function")
            if not isinstance(function, dict):  # custom tools and others: their JSON
                total += self._func_init + self.text(orjson.dumps(tool).decode())
                continue
            total += self._function(function)
        return total + 12

    def _function(self, function: dict[str, Any]) -> int:
        total = self._func_init
        description = str(function.get("description") or "").removesuffix(".")
        total += self.text(f"{function.get('name', '')}:{description}")
        parameters = function.get("parameters")
        properties = parameters.get("properties") if isinstance(parameters, dict) else None
        if isinstance(properties, dict) and properties:
            total += 3
            for key, schema in properties.items():
                total += 3 + self._property(str(key), schema)
        return total

    def _property(self, key: str, schema: Any) -> int:
        if not isinstance(schema, dict) or not _flat(schema):
            return self.text(f"{key}:{orjson.dumps(schema).decode()}")
        total = 0
        enum = schema.get("enum")
        if isinstance(enum, list):
            total += -3 + sum(3 + self.text(str(item)) for item in enum)
        description = str(schema.get("description") or "").removesuffix(".")
        return total + self.text(f"{key}:{schema.get('type', '')}:{description}")


def _flat(schema: dict[str, Any]) -> bool:
    """A property the cookbook's rule covers: a scalar type, a description, maybe an enum."""
    return isinstance(schema.get("type"), str) and set(schema) <= {"type", "description", "enum"}


def prompt_tokens(counter: Counter, messages: Sequence[dict[str, Any]], tools: Any) -> int:
    return counter.messages(messages) + counter.tools(tools)
