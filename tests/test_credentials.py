"""The one rule that finds credentials in a tree of settings (keys, token-shaped values, URL user-info)."""

from __future__ import annotations

import pytest

from builder.credentials import credential_key, find_credentials, refuse_credentials

HIDDEN = {
    "extra_body.api_key": {"extra_body": {"api_key": "sk-0123456789abcdef0123"}},
    "default_headers.Authorization": {"default_headers": {"Authorization": "Bearer abcdefghijkl"}},
    "base_url": {"base_url": "http://user:pass@127.0.0.1:8000/v1"},
    "hf-token": {"hf-token": "anything"},
    "apiKey2": {"apiKey2": "anything"},
    "headers.x": {"headers": {"x": "hf_abcdefghijklmnopqrstuvwxyz"}},
    "list[1]": {"list": ["fine", "Bearer abcdefghijkl"]},
}


@pytest.mark.parametrize("where", HIDDEN)
def test_a_credential_is_found_wherever_it_hides(where):
    found = list(find_credentials({"stage1": {"engine_options": HIDDEN[where]}}))
    assert len(found) == 1 and found[0].startswith(f"stage1.engine_options.{where}: ")
    with pytest.raises(ValueError, match=rf"settings: stage1\.engine_options\.{where.replace('[', r'.').replace(']', r'.')}"):
        refuse_credentials({"stage1": {"engine_options": HIDDEN[where]}}, "settings")


@pytest.mark.parametrize("key", ["max_num_batched_tokens", "max_new_tokens", "bos_token_id", "tokenizer_mode",
                                 "sort_key", "cache", "top_k", "key"])
def test_counts_and_tokenizer_options_are_not_credentials(key):
    assert not credential_key(key)
    assert not list(find_credentials({key: 8192, "base_url": "http://127.0.0.1:8000/v1", "model": "Qwen/Qwen2.5"}))
