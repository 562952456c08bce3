"""The Vercel AI SDK (npm ``ai`` with ``@ai-sdk/openai``) against palaver.

node runs the scenarios of node/vercel.mjs once per spelling of the upstream's tool-call
arguments (``RUNS``, module-scoped: node starts at most three times), printing a JSON line per
scenario; the tests check those lines, what the upstream received and what palaver stored.
The SDK's tool loop sends the whole transcript back on each step with the arguments
re-serialised by ``JSON.stringify``: the seam palaver must recognise (CONTRACT §5).
``provider("model")``, the SDK's default, speaks the Responses API (CONTRACT §9): earlier
answers go back as ``item_reference`` ids, chains by ``previousResponseId`` or a conversation.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.clients.conftest import (
    CLOCK,
    SPELLINGS,
    SYSTEM,
    Gateway,
    open_gateway,
    require_or_skip,
    tool_turns,
    without_arguments,
)

NODE_DIR = Path(__file__).parent / "node"
SCRIPT = NODE_DIR / "vercel.mjs"
TOOL_LOOPS = ["tool-loop", "tool-loop-stream"]  # over Chat Completions: provider.chat(...)
RESPONSES_TOOL_LOOPS = ["responses-tool-loop", "responses-tool-loop-stream"]  # provider(...)
# the scenarios to run against each spelling of the upstream's tool-call arguments
RUNS = {
    "spaced": [
        "generate",
        "stream",
        "transcript",
        *TOOL_LOOPS,
        "schema-default",
        "responses-default",
        "responses-stream",
        "responses-transcript",
        "responses-chain",
        "responses-conversation",
        *RESPONSES_TOOL_LOOPS,
    ],
    "compact": [*TOOL_LOOPS, *RESPONSES_TOOL_LOOPS],
    "empty": ["empty-arguments"],
}


@dataclass
class Run:
    gateway: Gateway
    results: dict[str, dict[str, Any]]  # scenario name -> its JSON line


def _node() -> str:
    node = shutil.which("node")
    require_or_skip(node is not None, "node")
    require_or_skip((NODE_DIR / "node_modules" / "ai").is_dir(), "tests/clients/node/node_modules")
    assert node is not None
    return node


def _run_script(node: str, gateway: Gateway, scenarios: list[str]) -> dict[str, dict[str, Any]]:
    done = subprocess.run(
        [node, str(SCRIPT), gateway.base_url, *scenarios],
        capture_output=True,
        text=True,
        timeout=45,
        check=False,
        cwd=NODE_DIR,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stdout.splitlines() if line.strip()]
    return {line["scenario"]: line for line in lines}


@pytest.fixture(scope="module")
def vercel() -> Iterator[Callable[[str], Run]]:
    """Runs the script against a fresh palaver for a spelling, once per module and spelling."""
    node = _node()
    with ExitStack() as stack:
        runs: dict[str, Run] = {}

        def run(spelling: str) -> Run:
            if spelling not in runs:
                gateway = stack.enter_context(open_gateway(spelling))
                runs[spelling] = Run(gateway, _run_script(node, gateway, RUNS[spelling]))
            return runs[spelling]

        yield run


def result(run: Run, scenario: str) -> dict[str, Any]:
    line = run.results[scenario]
    assert line["ok"], line
    return line


def test_generate_text(vercel: Callable[[str], Run]) -> None:
    run = vercel("spaced")
    line = result(run, "generate")
    assert (line["text"], line["finishReason"]) == ("[up] hello", "stop")
    assert run.gateway.last_sent("generate") == ["user: hello"]


def test_stream_text(vercel: Callable[[str], Run]) -> None:
    run = vercel("spaced")
    line = result(run, "stream")
    assert (line["text"], line["finishReason"]) == ("[up] hello there", "stop")
    assert line["parts"] > 1  # it did stream
    [body] = run.gateway.bodies("stream")
    assert body["stream"] is True
    assert run.gateway.last_sent("stream") == ["user: hello there"]


def test_whole_transcript_is_sent_and_stored_once(vercel: Callable[[str], Run]) -> None:
    run = vercel("spaced")
    assert result(run, "transcript")["texts"] == ["[up] one", "[up] two"]
    expected = [f"system: {SYSTEM}", "user: one", "assistant: [up] one", "user: two"]
    assert run.gateway.last_sent("transcript") == expected
    assert run.gateway.items("vercel-transcript") == [*expected, "assistant: [up] two"]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("scenario", TOOL_LOOPS)
def test_tool_loop_sends_and_stores_each_message_once(
    vercel: Callable[[str], Run], scenario: str, spelling: str
) -> None:
    run = vercel(spelling)
    line = result(run, scenario)
    assert line["texts"] == ["[up] Weather in Paris?", "[up] And tomorrow?"]
    assert line["calls"] == ["Paris", "Paris"]  # the tool ran once a turn
    assert [len(steps) for steps in line["steps"]] == [2, 2]
    assert len(run.gateway.bodies(scenario)) == 4
    expected = tool_turns()
    assert run.gateway.last_sent(scenario) == expected[:-1]
    assert run.gateway.items(f"vercel-{scenario}") == expected


def test_tool_without_parameters_called_with_empty_arguments(
    vercel: Callable[[str], Run],
) -> None:
    run = vercel("empty")
    line = result(run, "empty-arguments")
    assert line["calls"] == ["clock", "clock"]
    expected = tool_turns(("What time is it?", "And now?"), CLOCK)
    assert run.gateway.last_sent("empty-arguments") == expected[:-1]
    assert run.gateway.items("vercel-empty-arguments") == expected


def test_tool_loop_with_a_schema_default(vercel: Callable[[str], Run]) -> None:
    run = vercel("spaced")
    line = result(run, "schema-default")
    assert line["calls"] == ["Paris", "Paris"]
    expected = without_arguments(tool_turns())
    assert without_arguments(run.gateway.last_sent("schema-default")) == expected[:-1]
    assert without_arguments(run.gateway.items("vercel-schema-default")) == expected


# -- the default provider: openai("model") is the Responses API (CONTRACT §9) ---------------


def test_default_model_uses_the_responses_api(vercel: Callable[[str], Run]) -> None:
    run = vercel("spaced")
    line = result(run, "responses-default")
    assert (line["text"], line["finishReason"]) == ("[up] hi", "stop")
    assert run.gateway.last_sent("responses-default") == ["user: hi"]


def test_responses_stream(vercel: Callable[[str], Run]) -> None:
    run = vercel("spaced")
    line = result(run, "responses-stream")
    assert (line["text"], line["finishReason"]) == ("[up] hello there", "stop")
    assert line["parts"] > 1
    [body] = run.gateway.bodies("responses-stream")
    assert body["stream"] is True


DIALOGUE = ["user: one", "assistant: [up] one", "user: two", "assistant: [up] two", "user: three"]


def test_responses_transcript_refers_to_stored_answers(vercel: Callable[[str], Run]) -> None:
    """The whole transcript each turn, earlier answers as item_reference ids palaver
    resolves from the responses it stored."""
    run = vercel("spaced")
    assert result(run, "responses-transcript")["texts"] == ["[up] one", "[up] two", "[up] three"]
    assert run.gateway.last_sent("responses-transcript") == [f"system: {SYSTEM}", *DIALOGUE]


def test_responses_chain_by_previous_response_id(vercel: Callable[[str], Run]) -> None:
    run = vercel("spaced")
    line = result(run, "responses-chain")
    assert line["texts"] == ["[up] one", "[up] two", "[up] three"]
    assert len(set(line["ids"])) == 3
    bodies = run.gateway.bodies("responses-chain")
    assert [len(body["messages"]) for body in bodies] == [1, 3, 5]
    assert run.gateway.last_sent("responses-chain") == DIALOGUE


def test_responses_conversation(vercel: Callable[[str], Run]) -> None:
    """The system message comes with every turn; the conversation holds it once."""
    run = vercel("spaced")
    line = result(run, "responses-conversation")
    assert line["texts"] == ["[up] one", "[up] two", "[up] three"]
    expected = [f"system: {SYSTEM}", *DIALOGUE]
    assert run.gateway.last_sent("responses-conversation") == expected
    assert run.gateway.items(line["conversation"]) == [*expected, "assistant: [up] three"]


@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("scenario", RESPONSES_TOOL_LOOPS)
def test_responses_tool_loop(vercel: Callable[[str], Run], scenario: str, spelling: str) -> None:
    run = vercel(spelling)
    line = result(run, scenario)
    assert line["texts"] == ["[up] Weather in Paris?", "[up] And tomorrow?"]
    assert line["calls"] == ["Paris", "Paris"]
    assert [len(steps) for steps in line["steps"]] == [2, 2]
    assert len(run.gateway.bodies(scenario)) == 4
    assert run.gateway.last_sent(scenario) == tool_turns()[:-1]
