"""The official ``openai`` Node SDK against palaver: chat (plain, stream, 3 turns by the
chat extension, a tool round trip) and Responses (create, the ``stream()`` helper with
``finalResponse()``, 3-turn chains by ``previous_response_id`` streamed or not, a
conversation, a tool round trip). node runs the scenarios of node/openai.mjs once for the
module; the tests check its JSON lines, what the upstream received and what palaver stored.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from tests.clients.conftest import SYSTEM, Gateway, open_gateway, tool_turns
from tests.clients.test_vercel_ai import NODE_DIR, _node

SCRIPT = NODE_DIR / "openai.mjs"
DIALOGUE = ["user: one", "assistant: [up] one", "user: two", "assistant: [up] two", "user: three"]


class Run:
    def __init__(self, gateway: Gateway, results: dict[str, dict[str, Any]]) -> None:
        self.gateway = gateway
        self.results = results

    def __getitem__(self, scenario: str) -> dict[str, Any]:
        line = self.results[scenario]
        assert line["ok"], line
        return line


@pytest.fixture(scope="module")
def run() -> Iterator[Run]:
    node = _node()
    with open_gateway() as gateway:
        done = subprocess.run(
            [node, str(SCRIPT), gateway.base_url],
            capture_output=True,
            text=True,
            timeout=45,
            check=False,
            cwd=NODE_DIR,
        )
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
        yield Run(gateway, {line["scenario"]: line for line in lines})


def test_chat_plain_and_stream(run: Run) -> None:
    assert run["chat-plain"]["text"] == "[up] hello"
    assert run["chat-stream"]["text"] == "[up] hello"
    assert run["chat-stream"]["chunks"] > 2
    [body] = run.gateway.bodies("chat-stream")
    assert body["stream"] is True


def test_chat_three_turns_kept_by_palaver(run: Run) -> None:
    assert run["chat-turns"]["texts"] == ["[up] one", "[up] two", "[up] three"]
    expected = [f"system: {SYSTEM}", *DIALOGUE]
    assert run.gateway.last_sent("chat-turns") == expected
    assert run.gateway.items("node-chat") == [*expected, "assistant: [up] three"]


def test_chat_tool_round_trip(run: Run) -> None:
    line = run["chat-tools"]
    assert (line["finish"], line["text"]) == ("tool_calls", "[up] Weather in Paris?")
    assert run.gateway.last_sent("chat-tools") == tool_turns()[:4]


def test_responses_create_and_retrieve(run: Run) -> None:
    line = run["responses-plain"]
    assert (line["text"], line["status"], line["retrieved"]) == (
        "[up] hello",
        "completed",
        "[up] hello",
    )


def test_responses_stream_helper(run: Run) -> None:
    line = run["responses-stream"]
    assert (line["text"], line["deltas"]) == ("[up] hello", "[up] hello")
    assert (line["first"], line["last"]) == ("response.created", "response.completed")


@pytest.mark.parametrize("scenario", ["responses-chain", "responses-chain-stream"])
def test_responses_chain_of_three(run: Run, scenario: str) -> None:
    assert run[scenario]["texts"] == ["[up] one", "[up] two", "[up] three"]
    assert [len(b["messages"]) for b in run.gateway.bodies(scenario)] == [1, 3, 5]
    assert run.gateway.last_sent(scenario) == DIALOGUE


def test_responses_conversation(run: Run) -> None:
    line = run["responses-conversation"]
    assert line["texts"] == ["[up] one", "[up] two", "[up] three"]
    assert run.gateway.last_sent("responses-conversation") == DIALOGUE
    assert run.gateway.items(line["conversation"]) == [*DIALOGUE, "assistant: [up] three"]


def test_responses_tool_round_trip(run: Run) -> None:
    line = run["responses-tools"]
    assert line["calls"] == [["weather", "call_0"]]
    assert line["text"] == "[up] Weather in Paris?"
    assert run.gateway.last_sent("responses-tools") == tool_turns()[:4]
