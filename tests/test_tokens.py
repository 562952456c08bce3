"""Token counting against published reference counts, offline, and the model table."""

from __future__ import annotations

import base64
import os
import shutil
import struct
import subprocess
import sys
import zlib
from typing import Any

import pytest

from palaver.tokens import Counter, ModelInfo, ModelTable, built_in, get_encoding
from palaver.tokens.encodings import pattern, ranks, special_tokens
from palaver.tokens.images import data_url_size, image_tokens, tile_tokens

# OpenAI cookbook, "How to count tokens with tiktoken" (examples/How_to_count_tokens_with_
# tiktoken.ipynb): prompt tokens the OpenAI API reported for these requests.
JARGON = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]
WEATHER_TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
WEATHER = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]

# (encoding, what, API-reported or published count)
REFERENCE: list[tuple[str, str, int]] = [
    ("cl100k_base", "jargon", 129),  # gpt-3.5-turbo, gpt-4, gpt-4-0613
    ("o200k_base", "jargon", 124),  # gpt-4o, gpt-4o-mini
    ("cl100k_base", "weather+tools", 105),  # gpt-3.5-turbo, gpt-4
    ("o200k_base", "weather+tools", 101),  # gpt-4o, gpt-4o-mini
]
TEXTS: list[tuple[str, str, int]] = [
    ("cl100k_base", "tiktoken is great!", 6),
    ("o200k_base", "tiktoken is great!", 6),
    ("cl100k_base", "お誕生日おめでとう", 9),
    ("o200k_base", "お誕生日おめでとう", 8),
]


@pytest.mark.parametrize(("encoding", "what", "expected"), REFERENCE)
def test_prompt_counts_match_what_openai_reported(encoding: Any, what: str, expected: int) -> None:
    counter = Counter(get_encoding(encoding))
    if what == "jargon":
        assert counter.messages(JARGON) == expected
    else:
        assert counter.messages(WEATHER) + counter.tools(WEATHER_TOOLS) == expected


@pytest.mark.parametrize(("encoding", "text", "expected"), TEXTS)
def test_text_counts_match_the_cookbook(encoding: Any, text: str, expected: int) -> None:
    assert Counter(get_encoding(encoding)).text(text) == expected


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_encodings_are_tiktokens_own(name: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The regex and special tokens palaver builds with are those tiktoken's plugin gives,
    and the shipped file is the one it pins (the plugin's loader is only given our ranks)."""
    from tiktoken_ext import openai_public  # type: ignore[import-untyped]

    shipped = ranks(name)
    seen: list[str | None] = []

    def load(url: str, expected_hash: str | None = None) -> dict[bytes, int]:
        seen.append(expected_hash)
        return shipped

    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", load)
    theirs = getattr(openai_public, name)()
    assert theirs["pat_str"] == pattern(name)
    assert theirs["special_tokens"] == special_tokens(name)
    assert len(shipped) == {"o200k_base": 199998, "cl100k_base": 100256}[name]
    assert seen
    assert seen[0] is not None


OFFLINE = """
import socket
def refuse(*args, **kwargs):
    raise OSError("network unreachable (test)")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
from palaver.tokens import Counter, get_encoding
for name in ("o200k_base", "cl100k_base"):
    print(name, Counter(get_encoding(name)).text("tiktoken is great!"))
"""


def test_counting_needs_no_network(tmp_path: Any) -> None:
    """With no network (a network namespace of its own when the machine allows it, and no
    socket that can connect either way) and an empty tiktoken cache, both encodings load."""
    env = {**os.environ, "TIKTOKEN_CACHE_DIR": str(tmp_path), "DATA_GYM_CACHE_DIR": str(tmp_path)}
    command = [sys.executable, "-c", OFFLINE]
    unshare = shutil.which("unshare")
    if unshare and os.geteuid() == 0:
        probe = subprocess.run([unshare, "-n", "true"], capture_output=True)
        if probe.returncode == 0:
            command = [unshare, "-n", *command]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["o200k_base", "6", "cl100k_base", "6"]
    assert list(tmp_path.iterdir()) == []  # nothing downloaded or cached


def test_messages_count_names_tool_calls_and_parts() -> None:
    counter = Counter(get_encoding("o200k_base"))
    plain = {"role": "user", "content": "hello there"}
    assert counter.message(plain) == 3 + counter.text("user") + counter.text("hello there")
    named = {**plain, "name": "bob"}
    assert counter.message(named) == counter.message(plain) + counter.text("bob") + 1
    parts = {"role": "user", "content": [{"type": "text", "text": "hello there"}]}
    assert counter.message(parts) == counter.message(plain)
    call = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    }
    expected = 3 + counter.text("assistant") + 3
    expected += counter.text("get_weather") + counter.text('{"city": "Paris"}')
    assert counter.message(call) == expected
    image = {
        "role": "user",
        "content": [
            {"type": "image_url", "image_url": {"url": "https://x/a.png", "detail": "low"}}
        ],
    }
    assert counter.message(image) == 3 + counter.text("user") + 85


def _png(width: int, height: int) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + header
    crc = struct.pack(">I", zlib.crc32(chunk))
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + crc


def test_images_by_the_tile_rule() -> None:
    # OpenAI's published examples (vision guide, "Calculating costs")
    assert tile_tokens(1024, 1024, "high") == 765
    assert tile_tokens(2048, 4096, "high") == 1105
    assert tile_tokens(4096, 8192, "low") == 85
    url = "data:image/png;base64," + base64.b64encode(_png(2048, 4096)).decode()
    assert data_url_size(url) == (2048, 4096)
    assert image_tokens(url, "auto") == 1105
    header = b"GIF89a" + struct.pack("<HH", 300, 200)
    gif = "data:image/gif;base64," + base64.b64encode(header).decode()
    assert data_url_size(gif) == (300, 200)
    assert image_tokens("https://example.com/cat.jpg") == 765  # unseen: 1024x1024
    assert image_tokens("data:image/png;base64,not-base64!!") == 765


def test_the_model_table() -> None:
    assert built_in("gpt-4o") == ModelInfo(128_000, "o200k_base")
    assert built_in("gpt-4o-mini-2024-07-18") == ModelInfo(128_000, "o200k_base")
    assert built_in("gpt-4-0613").context_window == 8192  # type: ignore[union-attr]
    assert built_in("gpt-4-turbo-2024-04-09").context_window == 128_000  # type: ignore[union-attr]
    assert built_in("gpt-3.5-turbo-0125").tokenizer == "cl100k_base"  # type: ignore[union-attr]
    assert built_in("openai/gpt-4.1").context_window == 1_047_576  # type: ignore[union-attr]
    assert built_in("groq/llama-3.3-70b-versatile") is not None
    assert built_in("gpt-4omni") is None  # a prefix counts only before a separator
    assert built_in("my-local-model") is None
    table = ModelTable({"small": (2000, None), "gpt-4o": (None, "cl100k_base")})
    assert table.lookup("small") == ModelInfo(2000, "o200k_base")
    assert table.lookup("gpt-4o") == ModelInfo(128_000, "cl100k_base")
    assert table.lookup("unknown") is None
