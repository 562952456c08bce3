"""``palaver serve`` as a user runs it: a real process on a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import httpx2 as httpx
import openai
import pytest

from tests.servers import free_port, wait_healthy


@contextmanager
def palaver_process(
    *args: str, env: dict[str, str], cwd: Path, port: int | None = None
) -> Iterator[str]:
    """Run ``palaver serve ARGS`` with PORT set (``port``: where it really listens)."""
    env_port = free_port()
    port = port or env_port
    clean = {k: v for k, v in os.environ.items() if not k.endswith(("_API_KEY", "_BASE_URL"))}
    process = subprocess.Popen(
        [sys.executable, "-m", "palaver", "serve", *args],
        env={**clean, "PORT": str(env_port), **env},
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, output=lambda: process.stdout.read() if process.stdout else "")
        yield url
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_echo(tmp_path: Path, workers: str) -> None:
    with (
        palaver_process("--workers", workers, env={}, cwd=tmp_path) as url,
        openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0) as client,
    ):
        for _ in range(4):
            reply = client.chat.completions.create(
                model="gpt-3.5-turbo", messages=[{"role": "user", "content": "Hello world"}]
            )
            assert reply.choices[0].message.content == "Hello world"
        stream = client.chat.completions.create(
            model="gpt-3.5-turbo",
            messages=[{"role": "user", "content": "Hello world"}],
            stream=True,
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == (
            "Hello world"
        )


def test_flags_beat_environment(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "palaver.toml"
    config.write_text('[server]\napi_keys = ["sk-file"]\n')
    with palaver_process(
        "--port", str(port), "--config", str(config), env={}, cwd=tmp_path, port=port
    ) as url:
        assert httpx.get(url + "/v1/models").status_code == 401
        ok = httpx.get(url + "/v1/models", headers={"authorization": "Bearer sk-file"})
        assert ok.json()["data"][0]["id"] == "echo"


def test_version() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "palaver", "--version"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"palaver {metadata.version('palaver')}"


def test_two_processes_on_one_conversation_file_each_see_every_turn(tmp_path: Path) -> None:
    """Two servers sharing the SQLite file (as workers or replicas on one disk do), turns
    alternating between them: each finds the other's last turn in the history it loads, even
    though it keeps the conversation it last saw decoded in memory."""
    with (
        palaver_process(env={}, cwd=tmp_path) as one,
        palaver_process(env={}, cwd=tmp_path) as two,
        openai.OpenAI(base_url=one + "/v1", api_key="none", max_retries=0) as first,
        openai.OpenAI(base_url=two + "/v1", api_key="none", max_retries=0) as second,
    ):
        prompts = []
        for turn in range(6):
            client = first if turn % 2 == 0 else second
            reply = client.chat.completions.create(
                model="echo",
                messages=[{"role": "user", "content": f"turn {turn}"}],
                extra_body={"conversation": "shared"},
            )
            assert reply.choices[0].message.content == f"turn {turn}"
            assert reply.usage is not None
            prompts.append(reply.usage.prompt_tokens)
        assert prompts == sorted(set(prompts)), prompts  # each turn saw one more
        for client in (first, second):
            items = client.conversations.items.list("shared", order="asc")
            texts = [item.content[0].text for item in items.data]  # type: ignore[index,union-attr]
            assert texts == [text for n in range(6) for text in (f"turn {n}", f"turn {n}")]
