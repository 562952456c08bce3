"""The one settings schema, loaded from a TOML file, the environment and command-line flags.

Precedence: flag > environment > config file > default. Every source is merged into one plain
dict, then validated once against the schema below, so an error names the key it is about.
"""

from __future__ import annotations

import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import msgspec
from msgspec import Meta, Struct

from palaver.protocol import describe_validation_error


class ConfigError(Exception):
    """A bad config file or value; its message is one line naming the key."""


Seconds = Annotated[float, Meta(gt=0)]


class ServerSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 3001
    workers: Annotated[int, Meta(ge=1, le=256)] = 1
    api_keys: list[str] = []  # trimmed, as incoming keys are; a blank one is an error
    max_body_bytes: Annotated[int, Meta(ge=1024)] = 8 * 1024 * 1024
    access_log: bool = False  # one line per request, with its fields (CONTRACT §10)
    log_format: Literal["text", "json"] = "text"
    admin_key: str = ""  # protects /metrics; env PALAVER_ADMIN_KEY
    # browser origins allowed (CORS), e.g. ["http://localhost:5173"] or ["*"]; none by default
    cors_origins: list[Annotated[str, Meta(pattern=r"^(\*|https?://[^/\s]+/?)\Z")]] = []
    metrics: bool = True  # false: nothing recorded, /metrics answers 404
    # Slow and oversized clients (see palaver.server): 408 / 431 and the connection closed.
    header_timeout: Seconds = 10.0  # a request's line and headers, from its first byte
    body_idle_timeout: Seconds = 10.0  # the longest pause within a body
    body_timeout: Seconds = 60.0  # the whole body, from the end of the headers
    max_header_bytes: Annotated[int, Meta(ge=1024)] = 64 * 1024
    # Stopping: requests in flight get this long, then streams end with an error event.
    shutdown_grace: Annotated[float, Meta(ge=0, le=300)] = 3.0


class ProviderSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")]  # \Z: no final newline
    base_url: Annotated[str, Meta(pattern=r"^https?://")] = ""
    api_key: str | None = None
    api_key_env: str | None = None
    models: list[Annotated[str, Meta(min_length=1)]] = msgspec.field(default_factory=lambda: ["*"])
    kind: Literal["openai", "echo"] = "openai"
    headers: dict[str, str] = {}
    connect_timeout: Seconds = 10.0
    first_byte_timeout: Seconds = 300.0
    chunk_timeout: Seconds = 120.0
    source: str = "config file"


class CacheSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    ttl_seconds: Annotated[float, Meta(gt=0)] = 300.0
    max_entries: Annotated[int, Meta(ge=1)] = 10_000
    max_bytes: Annotated[int, Meta(ge=1024)] = 256 * 1024 * 1024
    backend: Literal["memory", "redis"] = "memory"


class ConversationSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    backend: Literal["sqlite", "memory", "redis"] = "sqlite"
    path: str = "palaver.sqlite3"
    max_messages: Annotated[int, Meta(ge=2)] = 50
    max_active: Annotated[int, Meta(ge=1)] = 1000
    auto_create: bool = False
    idle_ttl_seconds: Annotated[float, Meta(ge=0)] = 0.0
    # tokens kept free for the reply when a request gives no max_tokens (CONTRACT §5)
    reply_reserve: Annotated[int, Meta(ge=0)] = 1024


class ModelSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    """``[models."NAME"]``: facts about a model name, over palaver's built-in table."""

    context_window: Annotated[int, Meta(ge=16)] | None = None  # tokens
    tokenizer: Literal["o200k_base", "cl100k_base"] | None = None


class ResponsesSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    # Stored responses live in the conversations backend (memory, sqlite or redis).
    ttl_seconds: Annotated[float, Meta(gt=0)] = 30 * 86_400.0
    max_entries: Annotated[int, Meta(ge=1)] = 100_000  # memory backend: the oldest go first


class RedisSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    url: Annotated[str, Meta(pattern=r"^(redis|rediss|unix)://")] = "redis://127.0.0.1:6379/0"
    key_prefix: str = "palaver:"
    max_connections: Annotated[int, Meta(ge=1, le=10_000)] = 128  # per process
    pool_timeout: Seconds = 5.0  # wait for a free connection before failing the call


class KeySettings(Struct, forbid_unknown_fields=True, kw_only=True):
    """``[[keys]]``: a named key with its models and limits (0 = no limit)."""

    name: Annotated[str, Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}\Z")]
    key: str | None = None
    key_env: str | None = None
    models: list[Annotated[str, Meta(min_length=1)]] = msgspec.field(default_factory=lambda: ["*"])
    rpm: Annotated[int, Meta(ge=0)] = 0
    tpm: Annotated[int, Meta(ge=0)] = 0
    max_parallel: Annotated[int, Meta(ge=0)] = 0


class LimitsSettings(Struct, forbid_unknown_fields=True, kw_only=True):
    backend: Literal["memory", "redis"] = "memory"
    window_seconds: Annotated[float, Meta(gt=0, le=3600)] = 60.0  # rpm and tpm count this


class Settings(Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    providers: list[ProviderSettings] = []
    cache: CacheSettings = msgspec.field(default_factory=CacheSettings)
    conversations: ConversationSettings = msgspec.field(default_factory=ConversationSettings)
    models: dict[str, ModelSettings] = {}
    keys: list[KeySettings] = []
    limits: LimitsSettings = msgspec.field(default_factory=LimitsSettings)
    responses: ResponsesSettings = msgspec.field(default_factory=ResponsesSettings)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)


# Providers that the environment alone can configure: (name, key variable, base URL).
ENV_PROVIDERS: tuple[tuple[str, str, str], ...] = (
    ("openai", "OPENAI_API_KEY", "https://api.openai.com/v1"),
    ("groq", "GROQ_API_KEY", "https://api.groq.com/openai/v1"),
    ("cerebras", "CEREBRAS_API_KEY", "https://api.cerebras.ai/v1"),
    ("openrouter", "OPENROUTER_API_KEY", "https://openrouter.ai/api/v1"),
    ("mistral", "MISTRAL_API_KEY", "https://api.mistral.ai/v1"),
    ("deepseek", "DEEPSEEK_API_KEY", "https://api.deepseek.com/v1"),
    ("together", "TOGETHER_API_KEY", "https://api.together.xyz/v1"),
    ("gemini", "GEMINI_API_KEY", "https://generativelanguage.googleapis.com/v1beta/openai"),
)

# Single environment variables that set one key: variable -> dotted key.
ENV_KEYS: dict[str, str] = {
    "HOST": "server.host",
    "PORT": "server.port",
    "PALAVER_WORKERS": "server.workers",
    "PALAVER_API_KEYS": "server.api_keys",
    "PALAVER_ADMIN_KEY": "server.admin_key",
    "REDIS_URL": "redis.url",
}
ENV_PREFIX = "PALAVER_"  # PALAVER_CACHE__TTL_SECONDS=60 sets cache.ttl_seconds


def _set(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        child = tree.get(part)
        if not isinstance(child, dict):
            child = tree[part] = {}
        tree = child
    tree[leaf] = value


def _env_value(dotted: str, raw: str) -> Any:
    if dotted == "server.api_keys":
        return [key.strip() for key in raw.split(",") if key.strip()]
    return raw


def _read_file(path: str) -> dict[str, Any]:
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file {path}: not found") from None
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path}: invalid TOML: {exc}") from None


def _env_providers(env: Mapping[str, str], taken: set[Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for name, key_var, base_url in ENV_PROVIDERS:
        key = env.get(key_var)
        if name == "openai" and env.get("OPENAI_BASE_URL"):
            base_url = env["OPENAI_BASE_URL"]
        elif not key:
            continue
        found.append({"name": name, "base_url": base_url, "api_key": key, "source": key_var})
    ollama = env.get("OLLAMA_BASE_URL")
    if ollama:
        url = ollama.rstrip("/")
        found.append(
            {
                "name": "ollama",
                "base_url": url if url.endswith("/v1") else url + "/v1",
                "source": "OLLAMA_BASE_URL",
            }
        )
    return [provider for provider in found if provider["name"] not in taken]


def load_settings(
    config_path: str | None = None,
    env: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Settings:
    """Merge default < file < environment < flags and validate the result."""
    env = os.environ if env is None else env
    path = config_path or env.get("PALAVER_CONFIG")
    tree: dict[str, Any] = _read_file(path) if path else {}
    origin: dict[str, str] = {}

    for var, dotted in ENV_KEYS.items():
        if var in env:
            _set(tree, dotted, _env_value(dotted, env[var]))
            origin[dotted] = f"environment variable {var}"
    for var, raw in env.items():
        if var.startswith(ENV_PREFIX) and "__" in var:
            section, _, key = var[len(ENV_PREFIX) :].lower().partition("__")
            dotted = f"{section}.{key}"
            _set(tree, dotted, _env_value(dotted, raw))
            origin[dotted] = f"environment variable {var}"
    for dotted, value in (flags or {}).items():
        if value is not None:
            _set(tree, dotted, value)
            origin[dotted] = "command line"

    return settings_from(tree, env, origin)


def settings_from(
    tree: dict[str, Any], env: Mapping[str, str] | None = None, origin: Mapping[str, str] = {}
) -> Settings:
    """Validate a merged settings tree; providers from ``env`` join those of the tree."""
    env = {} if env is None else env
    file_providers = tree.get("providers", [])
    if not isinstance(file_providers, list):
        raise ConfigError("providers: must be an array of tables ([[providers]])")
    taken = {p.get("name", "") for p in file_providers if isinstance(p, dict)}
    tree = {**tree, "providers": file_providers + _env_providers(env, taken)}

    try:
        settings = msgspec.convert(tree, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_describe(exc, origin)) from None
    _check_api_keys(settings, origin)
    _check_keys(settings, env)
    _check_providers(settings, env)
    return settings


_UNKNOWN = re.compile(r"^Object contains unknown field '(?P<field>[^']+)'$")
_ENUM = re.compile(r"^Invalid enum value (?P<value>.+)$")


def _describe(error: msgspec.ValidationError, origin: Mapping[str, str]) -> str:
    """One line naming the key, the variable it came from, and for an enum what it allows."""
    message, param = describe_validation_error(error)
    unknown = _UNKNOWN.match(message)
    enum = _ENUM.match(message)
    if unknown:
        param = f"{param}.{unknown['field']}" if param else unknown["field"]
        message = "unknown setting"
        # An unknown section from the environment: name the whole key the variable set.
        under = [key for key in origin if key.startswith(param + ".")]
        if param not in origin and len(under) == 1:
            param = under[0]
    elif enum and param:
        allowed = _literal_values(param)
        if allowed:
            message = f"Expected {_alternatives(allowed)}, got {enum['value']}"
    where = f" (from {origin[param]})" if param and param in origin else ""
    return f"{param or 'config'}: {message}{where}"


def _literal_values(dotted: str) -> tuple[Any, ...] | None:
    """The values a ``Literal`` setting allows, found by walking the schema down ``dotted``."""
    kind: Any = Settings
    for part in re.sub(r"\[\d+\]", "", dotted).split("."):
        if not (isinstance(kind, type) and issubclass(kind, Struct)):
            return None
        kind = _unwrap(typing.get_type_hints(kind).get(part))
    return get_args(kind) if get_origin(kind) is Literal else None


def _unwrap(kind: Any) -> Any:
    """``list[X]``, ``X | None``: X."""
    while True:
        origin = get_origin(kind)
        if origin is list:
            kind = get_args(kind)[0]
        elif origin in (typing.Union, types.UnionType):
            kinds = [k for k in get_args(kind) if k is not type(None)]
            if len(kinds) != 1:
                return kind
            kind = kinds[0]
        else:
            return kind


def _alternatives(values: tuple[Any, ...]) -> str:
    quoted = [repr(value) for value in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _check_api_keys(settings: Settings, origin: Mapping[str, str]) -> None:
    """Keys are compared trimmed (an ``Authorization`` header's key is), so store them so."""
    keys = []
    for index, key in enumerate(settings.server.api_keys):
        if not key.strip():
            source = origin.get("server.api_keys")
            where = f" (from {source})" if source else ""
            raise ConfigError(
                f"server.api_keys[{index}]: empty key (blank after trimming spaces){where}"
            )
        keys.append(key.strip())
    settings.server.api_keys = keys


def _check_keys(settings: Settings, env: Mapping[str, str]) -> None:
    """Each ``[[keys]]`` entry: a unique name, one secret (trimmed, as incoming keys are)."""
    names: set[str] = set()
    secrets = set(settings.server.api_keys)
    for index, entry in enumerate(settings.keys):
        where = f"keys[{index}]"
        if entry.name in names:
            raise ConfigError(f"{where}.name: duplicate key name {entry.name!r}")
        names.add(entry.name)
        if (entry.key is None) == (entry.key_env is None):
            raise ConfigError(f"{where}: give exactly one of key and key_env")
        if entry.key_env is not None:
            value = env.get(entry.key_env)
            if not value or not value.strip():
                raise ConfigError(
                    f"{where}.key_env: environment variable {entry.key_env} is not set"
                )
            entry.key = value
        secret = (entry.key or "").strip()
        if not secret:
            raise ConfigError(f"{where}.key: empty key (blank after trimming spaces)")
        if secret in secrets:
            raise ConfigError(f"{where}.key: the same secret is configured twice")
        secrets.add(secret)
        entry.key = secret


def _check_providers(settings: Settings, env: Mapping[str, str]) -> None:
    seen: set[str] = set()
    for index, provider in enumerate(settings.providers):
        key = f"providers[{index}]"
        if provider.name in seen:
            raise ConfigError(f"{key}.name: duplicate provider name {provider.name!r}")
        seen.add(provider.name)
        if provider.kind == "openai" and not provider.base_url:
            raise ConfigError(f"{key}.base_url: required for provider {provider.name!r}")
        if provider.api_key_env and provider.api_key is None:
            value = env.get(provider.api_key_env)
            if not value:
                raise ConfigError(
                    f"{key}.api_key_env: environment variable {provider.api_key_env} is not set"
                )
            provider.api_key = value
