"""What palaver knows of a model name: its context window and its tokenizer.

``[models."NAME"]`` in the config says it for a name; otherwise a built-in table covers
well-known public models. A name is looked up as given, then without a provider prefix
(``openai/gpt-4o``), then by its longest known prefix followed by ``-``, ``:`` or ``@`` (dated
snapshots such as ``gpt-4o-2024-08-06``, tags such as ``llama3.1:8b``). A model palaver does
not know gets no token trimming.

The windows are the providers' published context lengths (see the README's table and its
sources). Models that are not OpenAI's are counted with the OpenAI tokenizer nearest theirs
(Llama 3's is built on ``cl100k_base``); that is an estimate, so set ``context_window`` a
little below the real one for them if the prompts run close to it.
"""

from __future__ import annotations

from dataclasses import dataclass

from palaver.tokens.encodings import EncodingName

O200K: EncodingName = "o200k_base"
CL100K: EncodingName = "cl100k_base"


@dataclass(frozen=True, slots=True)
class ModelInfo:
    context_window: int
    tokenizer: EncodingName


def _all(window: int, tokenizer: EncodingName, *names: str) -> dict[str, ModelInfo]:
    return dict.fromkeys(names, ModelInfo(window, tokenizer))


BUILT_IN: dict[str, ModelInfo] = {
    # OpenAI (platform.openai.com/docs/models)
    **_all(128_000, O200K, "gpt-4o", "gpt-4o-mini", "chatgpt-4o-latest", "gpt-5-chat-latest"),
    **_all(1_047_576, O200K, "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano"),
    **_all(400_000, O200K, "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5.1", "gpt-5-codex"),
    **_all(200_000, O200K, "o1", "o3", "o3-mini", "o3-pro", "o4-mini"),
    **_all(128_000, O200K, "o1-mini", "o1-preview"),
    **_all(131_072, O200K, "gpt-oss-120b", "gpt-oss-20b", "openai/gpt-oss-120b"),
    **_all(128_000, CL100K, "gpt-4-turbo", "gpt-4-turbo-preview", "gpt-4-1106-preview"),
    **_all(128_000, CL100K, "gpt-4-0125-preview"),
    **_all(8_192, CL100K, "gpt-4"),
    **_all(32_768, CL100K, "gpt-4-32k"),
    **_all(16_385, CL100K, "gpt-3.5-turbo"),
    **_all(4_096, CL100K, "gpt-3.5-turbo-instruct"),
    # Llama 3.x and 4 on Groq (console.groq.com/docs/models)
    **_all(131_072, CL100K, "llama-3.3-70b-versatile", "llama-3.1-8b-instant"),
    **_all(8_192, CL100K, "llama3-70b-8192", "llama3-8b-8192", "llama-guard-3-8b"),
    **_all(131_072, CL100K, "meta-llama/llama-4-scout-17b-16e-instruct"),
    **_all(131_072, CL100K, "meta-llama/llama-4-maverick-17b-128e-instruct"),
    # Llama on Cerebras (inference-docs.cerebras.ai/models)
    **_all(8_192, CL100K, "llama3.1-8b"),
    **_all(65_536, CL100K, "llama-3.3-70b"),
    **_all(8_192, CL100K, "llama-4-scout-17b-16e-instruct"),
    # Llama on Together (docs.together.ai/docs/serverless-models)
    **_all(131_072, CL100K, "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    **_all(131_072, CL100K, "meta-llama/Meta-Llama-3.1-8B-Instruct-Turbo"),
    **_all(131_072, CL100K, "meta-llama/Meta-Llama-3.1-70B-Instruct-Turbo"),
    **_all(130_815, CL100K, "meta-llama/Meta-Llama-3.1-405B-Instruct-Turbo"),
    **_all(8_192, CL100K, "meta-llama/Llama-3-70b-chat-hf", "meta-llama/Llama-3-8b-chat-hf"),
    # Mistral (docs.mistral.ai/getting-started/models)
    **_all(131_072, O200K, "mistral-large-latest", "mistral-medium-latest"),
    **_all(131_072, O200K, "mistral-small-latest", "open-mistral-nemo", "ministral-8b-latest"),
    **_all(131_072, O200K, "ministral-3b-latest", "pixtral-large-latest"),
    **_all(262_144, O200K, "codestral-latest"),
    **_all(32_768, O200K, "open-mistral-7b", "open-mixtral-8x7b"),
    **_all(65_536, O200K, "open-mixtral-8x22b"),
    # DeepSeek (api-docs.deepseek.com/quick_start/pricing)
    **_all(128_000, O200K, "deepseek-chat", "deepseek-reasoner"),
    # Gemini 2.x (ai.google.dev/gemini-api/docs/models)
    **_all(1_048_576, O200K, "gemini-2.0-flash", "gemini-2.0-flash-lite"),
    **_all(1_048_576, O200K, "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"),
}

_SEPARATORS = ("-", ":", "@")


def built_in(model: str) -> ModelInfo | None:
    """The built-in facts for ``model``, by the rules of this module's docstring."""
    found = BUILT_IN.get(model)
    if found is not None:
        return found
    if "/" in model:
        found = built_in(model.split("/", 1)[1])
        if found is not None:
            return found
    best = ""
    for name in BUILT_IN:
        if (
            len(name) > len(best)
            and model.startswith(name)
            and model[len(name) : len(name) + 1] in _SEPARATORS
        ):
            best = name
    return BUILT_IN[best] if best else None


class ModelTable:
    """The facts palaver uses for each model name: the config's, over the built-in ones."""

    def __init__(
        self, configured: dict[str, tuple[int | None, EncodingName | None]] | None = None
    ) -> None:
        self._configured = configured or {}
        self._memo: dict[str, ModelInfo | None] = {}

    def lookup(self, model: str) -> ModelInfo | None:
        try:
            return self._memo[model]
        except KeyError:
            pass
        known = built_in(model)
        window, tokenizer = self._configured.get(model, (None, None))
        if window is None:
            info = (
                None
                if known is None
                else ModelInfo(known.context_window, tokenizer or known.tokenizer)
            )
        else:
            info = ModelInfo(window, tokenizer or (known.tokenizer if known else O200K))
        if len(self._memo) < 10_000:  # model names come from clients: bound the memo
            self._memo[model] = info
        return info
