"""Credentials never enter a run: the one rule that finds them anywhere in a tree of settings.

A credential is read from the environment (``OPENAI_API_KEY``, ``HF_TOKEN``); the settings, the run's manifest and
an export's ``run_manifest.json`` (which ``lpt push`` uploads) must hold none. :func:`find_credentials` walks a
tree of mappings and lists and names every place that looks like one: a key that names a credential
(``api_key``, ``apiKey2``, ``hf-token``, ``Authorization``, ``password``, ``secret``), a value shaped like a token
(``Bearer …``, ``sk-…``, ``hf_…``), or a URL with a user name or password in it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit

# a key naming a credential: its words (split at _, -, ., spaces and camelCase) hold one of these
_KEY_WORDS = {"apikey", "key", "token", "secret", "password", "passwd", "authorization", "auth", "credential",
              "credentials", "bearer", "cookie"}
_KEY_PAIRS = {("api", "key"), ("access", "key"), ("secret", "key"), ("private", "key")}
_NOT_CREDENTIALS = re.compile(r"tokens$|^max_|^min_|_tokens_|token_ids?$|tokenizer", re.I)  # max_num_batched_tokens
_TOKEN_VALUE = re.compile(r"^(?:Bearer\s+\S{8,}|sk-[A-Za-z0-9_-]{16,}|hf_[A-Za-z0-9]{20,}|ghp_[A-Za-z0-9]{20,}|"
                          r"xox[abp]-[A-Za-z0-9-]{10,})$", re.I)


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)
    return [w for w in re.split(r"[\s_\-.:/]+|\d+", spaced.lower()) if w]


def credential_key(key: str) -> bool:
    """Whether a settings key names a credential (``api_key``, ``apiKey2``, ``hf-token``, ``Authorization``), and
    not a count or a tokenizer option (``max_num_batched_tokens``, ``bos_token_id``)."""
    if _NOT_CREDENTIALS.search(key):
        return False
    words = _words(key)
    if "key" in words:  # a bare "key" is too common (a cache key, a sort key): only next to api/access/secret
        return any(pair in zip(words, words[1:]) for pair in _KEY_PAIRS)
    return any(w in _KEY_WORDS for w in words)


def credential_value(value: str) -> str:
    """What makes a string a credential ("" when nothing does): a token's shape, or a URL's user-info."""
    text = value.strip()
    if _TOKEN_VALUE.match(text):
        return "a token"
    if "://" in text:
        try:
            parts = urlsplit(text)
        except ValueError:
            return ""
        if parts.username or parts.password:
            return "a user name or password in a URL"
    return ""


def find_credentials(tree: Any, path: str = "") -> Iterator[str]:
    """``"where: what"`` for each place in ``tree`` (mappings, lists, strings) that holds a credential."""
    if isinstance(tree, Mapping):
        for key, value in tree.items():
            where = f"{path}.{key}" if path else str(key)
            if credential_key(str(key)) and value not in (None, "", [], {}):
                yield f"{where}: a key that names a credential"
            else:
                yield from find_credentials(value, where)
    elif isinstance(tree, (list, tuple)):
        for i, value in enumerate(tree):
            yield from find_credentials(value, f"{path}[{i}]")
    elif isinstance(tree, str) and (why := credential_value(tree)):
        yield f"{path or 'value'}: {why}"


def refuse_credentials(tree: Any, what: str) -> None:
    """Raise ValueError (one line) naming the first credential in ``tree``; ``what`` names the tree."""
    found = next(find_credentials(tree), None)
    if found:
        raise ValueError(f"{what}: {found}; credentials are read from the environment (OPENAI_API_KEY, HF_TOKEN, "
                         f"an engine's own variable), never written into settings, a run or an export")


__all__ = ["credential_key", "credential_value", "find_credentials", "refuse_credentials"]
