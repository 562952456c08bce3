"""One schema, three sources: flag > environment > config file > default."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from palaver.config import ConfigError, load_settings, settings_from


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "palaver.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    settings = load_settings(env={})
    assert settings.server.port == 3001
    assert settings.server.host == "127.0.0.1"
    assert settings.providers == []
    assert settings.cache.ttl_seconds == 300
    assert settings.conversations.backend == "sqlite"
    assert settings.server.max_body_bytes == 8388608


def test_precedence(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 4000\nhost = '0.0.0.0'\nmax_body_bytes = 2048\n")
    assert load_settings(path, env={}).server.port == 4000
    env = {"PORT": "5000", "PALAVER_CONFIG": path}
    assert load_settings(env=env).server.port == 5000
    settings = load_settings(path, env=env, flags={"server.port": 6000})
    assert settings.server.port == 6000
    assert settings.server.host == "0.0.0.0"
    assert settings.server.max_body_bytes == 2048


def test_env_keys_and_nested_env(tmp_path: Path) -> None:
    env = {
        "PALAVER_API_KEYS": "k1, k2,",
        "REDIS_URL": "redis://10.0.0.1:6379/1",
        "PALAVER_CACHE__TTL_SECONDS": "60",
        "PALAVER_CONVERSATIONS__AUTO_CREATE": "false",
    }
    settings = load_settings(env=env)
    assert settings.server.api_keys == ["k1", "k2"]
    assert settings.redis.url == "redis://10.0.0.1:6379/1"
    assert settings.cache.ttl_seconds == 60
    assert settings.conversations.auto_create is False


def test_file_providers(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
[[providers]]
name = "groq"
base_url = "https://api.groq.com/openai/v1"
api_key_env = "MY_GROQ"
models = ["llama-3.3-70b-versatile"]
first_byte_timeout = 30
""",
    )
    settings = load_settings(path, env={"MY_GROQ": "gsk-1"})
    (groq,) = settings.providers
    assert groq.api_key == "gsk-1"
    assert groq.models == ["llama-3.3-70b-versatile"]
    assert groq.first_byte_timeout == 30
    assert groq.connect_timeout == 10


def test_env_providers() -> None:
    env = {
        "OPENAI_API_KEY": "sk-o",
        "GROQ_API_KEY": "gsk",
        "GEMINI_API_KEY": "g",
        "OLLAMA_BASE_URL": "http://localhost:11434",
    }
    providers = {p.name: p for p in load_settings(env=env).providers}
    assert providers["openai"].base_url == "https://api.openai.com/v1"
    assert providers["openai"].models == ["*"]
    assert providers["groq"].base_url == "https://api.groq.com/openai/v1"
    assert providers["gemini"].base_url.startswith("https://generativelanguage.googleapis.com")
    assert providers["ollama"].base_url == "http://localhost:11434/v1"
    assert providers["ollama"].api_key is None


def test_openai_base_url_alone_makes_a_provider() -> None:
    (local,) = load_settings(env={"OPENAI_BASE_URL": "http://127.0.0.1:8000/v1"}).providers
    assert local.name == "openai"
    assert local.base_url == "http://127.0.0.1:8000/v1"


@pytest.mark.parametrize(
    ("text", "env", "key"),
    [
        ("[cache]\nttl_seconds = 'soon'\n", {}, "cache.ttl_seconds"),
        ("[cache]\nttl_secs = 3\n", {}, "cache"),
        ("[server]\nport = 70000\n", {}, "server.port"),
        ("[conversations]\nbackend = 'mongo'\n", {}, "conversations.backend"),
        ("[[providers]]\nname = 'a'\n", {}, "providers[0].base_url"),
        ("[[providers]]\nname = 'a'\nbase_url = 'ftp://x'\n", {}, "providers[0].base_url"),
        ("[[providers]]\nname='a'\nbase_url='http://x'\napi_key_env='NOPE'\n", {}, "NOPE"),
        ("[server\n", {}, "invalid TOML"),
        ("", {"PORT": "abc"}, "environment variable PORT"),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text), env=env)
    assert key in str(caught.value)
    assert "\n" not in str(caught.value)


def test_serve_exits_with_one_line_on_bad_config(tmp_path: Path) -> None:
    path = write(tmp_path, "[cache]\nttl_seconds = -1\n")
    result = subprocess.run(
        [sys.executable, "-m", "palaver", "serve", "--config", path],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "cache.ttl_seconds" in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("env", "line"),
    [
        (
            {"PALAVER_CACHE__TTL": "5"},
            "cache.ttl: unknown setting (from environment variable PALAVER_CACHE__TTL)",
        ),
        (
            {"PALAVER_CACHE__BACKEND": "mem"},
            "cache.backend: Expected 'memory' or 'redis', got 'mem' "
            "(from environment variable PALAVER_CACHE__BACKEND)",
        ),
        (
            {"PALAVER_CONVERSATIONS__BACKEND": "mongo"},
            "conversations.backend: Expected 'sqlite', 'memory' or 'redis', got 'mongo' "
            "(from environment variable PALAVER_CONVERSATIONS__BACKEND)",
        ),
        (
            {"PALAVER_NOPE__KEY": "1"},
            "nope.key: unknown setting (from environment variable PALAVER_NOPE__KEY)",
        ),
    ],
)
def test_bad_environment_value_names_the_variable(env: dict[str, str], line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(env=env)
    assert str(caught.value) == line


def test_file_errors_name_the_key_and_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, "[cache]\nttl_secs = 3\n"), env={})
    assert str(caught.value) == "cache.ttl_secs: unknown setting"
    bad_kind = "[[providers]]\nname = 'a'\nbase_url = 'http://x'\nkind = 'claude'\n"
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, bad_kind), env={})
    assert str(caught.value) == "providers[0].kind: Expected 'openai' or 'echo', got 'claude'"


def test_api_keys_are_trimmed_like_incoming_keys(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\napi_keys = [" sk-a ", "\\tsk-b"]\n')
    assert load_settings(path, env={}).server.api_keys == ["sk-a", "sk-b"]


@pytest.mark.parametrize("keys", ['["sk-a", "  "]', '[""]'])
def test_blank_api_key_is_a_config_error(tmp_path: Path, keys: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, f"[server]\napi_keys = {keys}\n"), env={})
    assert str(caught.value).startswith("server.api_keys[")
    assert "empty" in str(caught.value)


def test_provider_name_with_a_final_newline_is_refused() -> None:
    provider = {"name": "groq\n", "base_url": "https://api.groq.com/openai/v1"}
    with pytest.raises(ConfigError, match=r"providers\[0\]\.name"):
        settings_from({"providers": [provider]})
