"""The tokenizers, offline: OpenAI's ``tiktoken`` with the encoding files shipped in palaver.

tiktoken downloads its encoding files on first use; palaver never does. The two files it needs,
``o200k_base`` (gpt-4o, gpt-4.1, gpt-5, o-series) and ``cl100k_base`` (gpt-4, gpt-3.5), are
OpenAI's published files, in ``palaver/tokens/data`` (gzip), checked against the SHA-256 that
tiktoken itself pins for them before use. The regex and special tokens are tiktoken's own
(``tiktoken_ext.openai_public``; a test checks them against it).

An encoding is loaded on first use (about 0.3 s and 70 MB for ``o200k_base``), once per
process, so a palaver whose models have no known context window never loads one.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import threading
from importlib import resources
from typing import Literal

import tiktoken

EncodingName = Literal["o200k_base", "cl100k_base"]
ENCODINGS: tuple[EncodingName, ...] = ("o200k_base", "cl100k_base")

ENDOFTEXT = "<|endoftext|>"
ENDOFPROMPT = "<|endofprompt|>"

_SHA256 = {  # as pinned by tiktoken_ext.openai_public
    "cl100k_base": "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    "o200k_base": "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
}
_PATTERNS = {
    "cl100k_base": r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s""",  # noqa: E501
    "o200k_base": "|".join(
        [
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
            r"""\p{N}{1,3}""",
            r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
            r"""\s*[\r\n]+""",
            r"""\s+(?!\S)""",
            r"""\s+""",
        ]
    ),
}
_SPECIAL = {
    "cl100k_base": {
        ENDOFTEXT: 100257,
        "<|fim_prefix|>": 100258,
        "<|fim_middle|>": 100259,
        "<|fim_suffix|>": 100260,
        ENDOFPROMPT: 100276,
    },
    "o200k_base": {ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
}


class EncodingDataError(Exception):
    """A shipped encoding file is missing or not the one OpenAI published."""


def ranks(name: EncodingName) -> dict[bytes, int]:
    """The merge ranks of ``name`` from its shipped file (tiktoken's own file format)."""
    try:
        packed = resources.files("palaver.tokens").joinpath(f"data/{name}.tiktoken.gz")
        data = gzip.decompress(packed.read_bytes())
    except (OSError, EOFError) as exc:
        raise EncodingDataError(f"the {name} encoding file cannot be read: {exc}") from None
    if hashlib.sha256(data).hexdigest() != _SHA256[name]:
        raise EncodingDataError(f"the {name} encoding file is not OpenAI's published one")
    return {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in data.splitlines() if line)
    }


def pattern(name: EncodingName) -> str:
    return _PATTERNS[name]


def special_tokens(name: EncodingName) -> dict[str, int]:
    return dict(_SPECIAL[name])


_loaded: dict[str, tiktoken.Encoding] = {}
_lock = threading.Lock()


def get_encoding(name: EncodingName) -> tiktoken.Encoding:
    """The encoding ``name``, loaded on first use."""
    found = _loaded.get(name)
    if found is not None:
        return found
    with _lock:
        found = _loaded.get(name)
        if found is None:
            found = tiktoken.Encoding(
                name,
                pat_str=pattern(name),
                mergeable_ranks=ranks(name),
                special_tokens=special_tokens(name),
            )
            _loaded[name] = found
    return found
