"""Real clients against palaver: what they send, what palaver stores, in one comparable form.

Each client module drives palaver (in-process, over the loopback test upstream) the way an
application using that client does, and checks two things against one expected transcript:
the upstream's last request carries each message exactly once, and the conversation's items
list each message once. Both are flattened to lines like ``user: hi``, ``call weather
{"city":"Paris"} #call_0``, ``result #call_0: sunny`` so that a doubled transcript shows as
a readable diff.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import openai
import pytest

from tests.conftest import provider_entry, run_palaver, run_upstream
from tests.upstream import Upstream

API_KEY = "sk-client"
SYSTEM = "Be terse."

# How a model spells the tool-call arguments it returns; clients parse them and write them
# back their own way (JSON.stringify and pydantic compact them, Python's json.dumps spaces
# them), so each spelling catches the clients that re-spell it.
ARGUMENTS = {
    "spaced": '{"city": "Paris"}',  # the test upstream's own
    "compact": '{"city":"Paris"}',  # as OpenAI's models write them
    "empty": "",  # a tool without parameters, as some models and servers call it
}
SPELLINGS = ["spaced", "compact"]  # of the weather tool's arguments


@dataclass
class Gateway:
    upstream: Upstream
    url: str  # palaver's base URL, without /v1

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def bodies(self, model: str) -> list[dict[str, Any]]:
        """The chat requests that reached the upstream for ``model`` (one per scenario)."""
        return [r.body for r in self.upstream.chat_requests if r.body.get("model") == model]

    def last_sent(self, model: str) -> list[str]:
        bodies = self.bodies(model)
        assert bodies, f"no request for {model} reached the upstream"
        return flatten_messages(bodies[-1]["messages"])

    def items(self, conversation: str) -> list[str]:
        with openai.OpenAI(base_url=self.base_url, api_key=API_KEY, max_retries=0) as client:
            return flatten_items(list(client.conversations.items.list(conversation)))


@contextmanager
def open_gateway(spelling: str = "spaced") -> Iterator[Gateway]:
    arguments = ARGUMENTS[spelling]
    with (
        run_upstream("up", answers_tool_results=True, tool_arguments=arguments) as upstream,
        run_palaver([provider_entry(upstream)]) as url,
    ):
        yield Gateway(upstream, url)


@pytest.fixture
def gateway(request: pytest.FixtureRequest) -> Iterator[Gateway]:
    """palaver over the test upstream; parametrize indirectly with a spelling name."""
    with open_gateway(getattr(request, "param", "spaced")) as gw:
        yield gw


# -- one comparable form ---------------------------------------------------------------------


def _arguments(text: str) -> str:
    """Arguments by meaning, so the expected lines need not care how a client spells them
    (no arguments at all mean an empty object: clients send ``""`` back as ``{}``)."""
    if not text.strip():
        return "{}"
    try:
        return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    except ValueError:
        return f"(not JSON) {text}"


def _text(content: Any) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "".join(part.get("text", "") for part in content if isinstance(part, dict))


def flatten_messages(messages: list[dict[str, Any]]) -> list[str]:
    lines: list[str] = []
    for message in messages:
        role = message["role"]
        text = _text(message.get("content"))
        if role == "tool":
            lines.append(f"result #{message.get('tool_call_id')}: {text}")
            continue
        if text or not message.get("tool_calls"):
            lines.append(f"{role}: {text}")
        for call in message.get("tool_calls") or ():
            function = call.get("function") or {}
            args = _arguments(function.get("arguments", ""))
            lines.append(f"call {function.get('name')} {args} #{call.get('id')}")
    return lines


def flatten_items(items: list[Any]) -> list[str]:
    lines: list[str] = []
    for item in items:
        if item.type == "message":
            text = "".join(getattr(part, "text", "") for part in item.content)
            lines.append(f"{item.role}: {text}")
        elif item.type == "function_call":
            lines.append(f"call {item.name} {_arguments(item.arguments)} #{item.call_id}")
        elif item.type == "function_call_output":
            lines.append(f"result #{item.call_id}: {item.output}")
        else:
            lines.append(f"({item.type})")
    return lines


WEATHER = ('call weather {"city":"Paris"} #call_0', "result #call_0: sunny in Paris")
CLOCK = ("call clock {} #call_0", "result #call_0: noon")


def tool_turns(
    questions: tuple[str, str] = ("Weather in Paris?", "And tomorrow?"),
    tool: tuple[str, str] = WEATHER,
) -> list[str]:
    """The two-turn tool conversation every client runs, flattened: a question, the tool call
    and its result, the answer in words; then a second question the same way."""
    lines = [f"system: {SYSTEM}"]
    for question in questions:
        lines += [f"user: {question}", *tool, f"assistant: [up] {question}"]
    return lines


def without_arguments(lines: list[str]) -> list[str]:
    """The lines with tool-call arguments left out, where a client changes their meaning."""
    return [re.sub(r"^(call \S+) .* (#\S+)$", r"\1 \2", line) for line in lines]


def require_or_skip(ok: bool, what: str) -> None:
    """A missing client fails in CI (it must run there) and skips elsewhere."""
    if ok:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing; CI must run the client suite (make test installs it)")
    pytest.skip(f"{what} is missing (make test installs it)")
