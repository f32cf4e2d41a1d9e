"""An engine for any OpenAI-compatible chat server: ``vllm serve``, SGLang, ``transformers serve``, a hosted API.

It sends ``/v1/chat/completions`` requests with the ``openai`` client's async API, at most
``concurrency`` at a time. Failed calls (rate limits 429, timeouts 408, conflicts 409, server errors
5xx, lost connections) are retried by the ``openai`` client itself: exponential backoff from 0.5 s up to
8 s with up to 25 % jitter, honouring ``Retry-After``; after ``max_retries`` the engine raises
:class:`OpenAIEngineError` naming the request. Results come back in request order.

What is sent, per :class:`~builder.engines.base.Request`:

* messages: text parts as ``{"type": "text"}``; each PIL image, after
  :func:`~builder.engines.base.cap_pixels` with the request's ``max_pixels``, as a PNG data URL
  ``{"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}``.
* sampling: ``temperature``, ``top_p``, ``max_tokens``, ``stop``, ``seed``, ``n``. ``top_k``,
  ``repetition_penalty`` and ``bad_words`` are not OpenAI parameters: for vLLM-style servers they go
  into the request body as vLLM's extra parameters (sent only when they differ from "off").
* ``continue_final_message``: vLLM and SGLang continue a prefilled assistant turn when the body carries
  ``{"continue_final_message": true, "add_generation_prompt": false}``; the engine sends that, and the
  samples hold only the new text. A hosted API (``server_kind="openai"``) has no such switch and would
  answer with a *new* assistant turn instead, so the engine refuses such requests with a
  ``ValueError`` rather than silently doing something else. A server that rejects the fields
  (``transformers serve`` answers 422) gives an :class:`OpenAIEngineError` saying so.
* ``n``: sent as is. A server that ignores ``n`` (``transformers serve`` does) returns fewer choices;
  the engine then makes ``n`` separate calls with seeds ``seed, seed+1, ...`` (no seed if the request
  has none), and does so straight away for the rest of the engine's life.

Stop strings are cut off the returned text (``"abc STOP def"`` -> ``"abc "``) whatever the server does,
so every server gives the same text for the same tokens.

With ``cache=`` (a ``.sqlite`` or ``.jsonl`` path, see :mod:`builder.engines.cache`) a request seen
before is answered from the cache without any network call, and each response is stored as soon as it
arrives.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import io
import os
import re
import threading
from typing import Any, Literal

from .base import Engine, PromptTooLong, Request, Sample, cap_pixels, request_start, require_package
from .cache import RequestCache, open_cache, request_key

ServerKind = Literal["auto", "vllm", "openai"]
SERVER_KINDS = ("auto", "vllm", "openai")


class OpenAIEngineError(RuntimeError):
    """A request failed for good (after the client's retries, or rejected by the server)."""


class OpenAIPromptTooLong(OpenAIEngineError, PromptTooLong):
    """The server refused a prompt past the model's context (HTTP 400 "maximum context length"): the engine cannot
    measure a prompt before sending it (the server's template and tokenizer count), so the server's refusal is
    the measure; a counted skip under ``--skip-bad`` as for the other engines."""


# the servers' words for a prompt past the context: OpenAI's code, vLLM's and SGLang's messages
_CONTEXT = re.compile(r"context_length_exceeded|maximum context length|longer than the maximum model length|"
                      r"exceeds the maximum allowed length", re.IGNORECASE)


def image_to_data_url(image: Any, max_pixels: int | None = None) -> tuple[str, str]:
    """``(data URL, sha256 of the PNG bytes)`` of a PIL image, shrunk to at most ``max_pixels``."""
    image = cap_pixels(image, max_pixels)
    if image.mode not in ("RGB", "RGBA", "L", "LA"):
        image = image.convert("RGB")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    data = buf.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii"), hashlib.sha256(data).hexdigest()


def truncate_at_stop(text: str, stop: tuple[str, ...] | list[str]) -> str:
    """``text`` up to (not including) the first occurrence of any stop string."""
    cut = min((i for s in stop if s and (i := text.find(s)) >= 0), default=-1)
    return text if cut < 0 else text[:cut]


class OpenAIEngine(Engine):
    """Chat completions from an OpenAI-compatible server.

    Args:
        model: the model name the server knows (for ``vllm serve`` / ``transformers serve``: the name or
            path it was started with).
        base_url: the server, e.g. ``http://127.0.0.1:8000/v1``; ``None`` uses ``OPENAI_BASE_URL`` or
            the OpenAI API.
        api_key: defaults to ``OPENAI_API_KEY``, else ``"EMPTY"`` (local servers take any key).
        concurrency: the most calls in flight at once.
        max_retries: retries per call, done by the ``openai`` client (backoff with jitter).
        timeout: seconds per call.
        cache: a ``.sqlite``/``.db`` or ``.json``/``.jsonl`` path, a cache object, or ``None``.
        extra_body: extra JSON fields sent with every call (e.g. ``{"chat_template_kwargs": {...}}``).
        server_kind: ``"vllm"`` (vLLM / SGLang: extra sampling parameters, prefill continuation and
            native ``n`` allowed), ``"openai"`` (a hosted API: only OpenAI's own parameters; requests
            needing more raise ``ValueError``), or ``"auto"`` (send vLLM-style fields only when a
            request needs them, and detect whether ``n`` is honoured).
    """

    name = "openai"

    def __init__(
        self,
        model: str,
        base_url: str | None = None,
        api_key: str | None = None,
        *,
        concurrency: int = 8,
        max_retries: int = 5,
        timeout: float = 600.0,
        cache: str | os.PathLike[str] | RequestCache | None = None,
        extra_body: dict[str, Any] | None = None,
        server_kind: ServerKind = "auto",
        **options: Any,
    ) -> None:
        super().__init__(model, **options)
        require_package("openai", "the openai engine", "pip install 'openai>=1.40'")
        if server_kind not in SERVER_KINDS:
            raise ValueError(f"server_kind must be one of {SERVER_KINDS}, not {server_kind!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, not {concurrency}")
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL")
        self.api_key = api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY"
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.timeout = timeout
        self.extra_body = dict(extra_body or {})
        self.server_kind: ServerKind = server_kind
        self.cache = open_cache(cache)
        # None: not known yet (auto); True: the server returns n choices; False: it ignores n.
        self.native_n: bool | None = None if server_kind == "auto" else True
        self.stats = {"calls": 0, "cache_hits": 0}  # network calls made (not counting retries), cache hits

    # ----- building a call -----

    def _messages(self, request: Request) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The messages to send, and their canonical form for the cache key (images -> sha256)."""
        sent, canon = [], []
        for m in request.messages:
            content = m.get("content")
            if not isinstance(content, list):
                sent.append(dict(m))
                canon.append(dict(m))
                continue
            parts, canon_parts = [], []
            for part in content:
                kind = part.get("type")
                if kind == "image":
                    url, digest = image_to_data_url(part["image"], request.max_pixels)
                    parts.append({"type": "image_url", "image_url": {"url": url}})
                    canon_parts.append({"type": "image", "sha256": digest})
                elif kind == "text":
                    parts.append({"type": "text", "text": part["text"]})
                    canon_parts.append(parts[-1])
                else:
                    parts.append(dict(part))  # already in OpenAI form (e.g. image_url)
                    canon_parts.append(parts[-1])
            sent.append({**m, "content": parts})
            canon.append({**m, "content": canon_parts})
        return sent, canon

    def _body(self, request: Request) -> dict[str, Any]:
        """Keyword arguments for ``chat.completions.create`` other than model/messages/n/seed."""
        p = request.params
        vllm_fields: dict[str, Any] = {}
        if p.top_k and p.top_k > 0:
            vllm_fields["top_k"] = p.top_k
        if p.repetition_penalty != 1.0:
            vllm_fields["repetition_penalty"] = p.repetition_penalty
        if p.bad_words:
            vllm_fields["bad_words"] = list(p.bad_words)
        if request.continue_final_message:
            last = request.messages[-1] if request.messages else {}
            if last.get("role") != "assistant":
                raise ValueError("continue_final_message=True needs the last message to be an assistant turn")
            vllm_fields["continue_final_message"] = True
            vllm_fields["add_generation_prompt"] = False
        if self.server_kind == "openai" and vllm_fields:
            raise ValueError(
                f"server_kind='openai' (a hosted OpenAI API) cannot honour {sorted(vllm_fields)}: it has no "
                "top_k / repetition_penalty / bad_words, and it does not continue a prefilled assistant "
                "message (it would start a new turn). Use a vLLM or SGLang server (server_kind='vllm'), "
                "or drop these settings."
            )
        kwargs: dict[str, Any] = {"temperature": p.temperature, "top_p": p.top_p}
        kwargs["max_completion_tokens" if self.server_kind == "openai" else "max_tokens"] = p.max_new_tokens
        if p.stop:
            kwargs["stop"] = list(p.stop)
        extra = {**self.extra_body, **vllm_fields}
        if extra:
            kwargs["extra_body"] = extra
        return kwargs

    def _key(self, request: Request, canon_messages: list[dict[str, Any]]) -> str:
        return request_key(
            {
                "base_url": self.base_url,
                "model": self.model_id,
                "messages": canon_messages,
                "params": dataclasses.asdict(request.params),
                "continue_final_message": request.continue_final_message,
                "max_pixels": request.max_pixels,
                "extra_body": self.extra_body,
                "server_kind": self.server_kind,
            }
        )

    # ----- running -----

    def generate(self, requests: list[Request], *, progress: bool = False) -> list[list[Sample]]:
        """``params.n`` samples for each request, in request order (see the module docstring)."""
        if not requests:
            return []
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(self.agenerate(requests, progress=progress))
        # Called from inside an event loop (a notebook, an async app): run ours in a thread.
        out: dict[str, Any] = {}

        def run() -> None:
            try:
                out["result"] = asyncio.run(self.agenerate(requests, progress=progress))
            except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
                out["error"] = e

        t = threading.Thread(target=run)
        t.start()
        t.join()
        if "error" in out:
            raise out["error"]
        return out["result"]

    async def agenerate(self, requests: list[Request], *, progress: bool = False) -> list[list[Sample]]:
        """The async form of :meth:`generate`."""
        import openai
        from tqdm.auto import tqdm

        results: list[list[Sample] | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=f"openai:{self.model_id}", disable=not progress)
        semaphore = asyncio.Semaphore(self.concurrency)  # calls in flight
        slots = asyncio.Semaphore(2 * self.concurrency)  # requests being prepared (images encoded) or in flight
        self._probe_lock = asyncio.Lock()
        client = openai.AsyncOpenAI(
            api_key=self.api_key, base_url=self.base_url, max_retries=self.max_retries, timeout=self.timeout
        )
        try:
            async with asyncio.TaskGroup() as group:
                for i, request in enumerate(requests):
                    group.create_task(self._one(client, semaphore, slots, i, request, results, bar))
        except BaseExceptionGroup as eg:
            # Surface the first real failure (the other calls were cancelled because of it).
            raise _first_error(eg)
        finally:
            bar.close()
            await client.close()
        return results  # type: ignore[return-value]

    async def _one(self, client, semaphore, slots, index: int, request: Request, results, bar) -> None:
        body = self._body(request)  # raises ValueError early for requests this server cannot honour
        async with slots:  # only a bounded number of requests hold their encoded images at once
            messages, canon = await asyncio.to_thread(self._messages, request)
            key = self._key(request, canon)
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                self.stats["cache_hits"] += 1
                results[index] = [Sample(**s) for s in cached]
            else:
                samples = await self._sample(client, semaphore, index, request, messages, body)
                if self.cache is not None:
                    self.cache.put(key, [dataclasses.asdict(s) for s in samples])  # at once: a crash keeps it
                results[index] = samples
        bar.update(1)

    async def _sample(self, client, semaphore, index, request, messages, body) -> list[Sample]:
        p = request.params
        n = p.n
        if n < 1:
            return []
        if n == 1 or self.native_n:
            return (await self._call(client, semaphore, index, request, messages, body, n=n, seed=p.seed))[:n]
        if self.native_n is None:
            async with self._probe_lock:  # one request finds out whether the server honours n; the rest wait
                if self.native_n is None:
                    samples = await self._call(client, semaphore, index, request, messages, body, n=n, seed=p.seed)
                    # A server that ignores n returns fewer choices: discard them and, from now on,
                    # make n calls with consecutive seeds.
                    self.native_n = len(samples) >= n
                    if self.native_n:
                        return samples[:n]
            if self.native_n:
                return (await self._call(client, semaphore, index, request, messages, body, n=n, seed=p.seed))[:n]
        seeds = [None if p.seed is None else p.seed + j for j in range(n)]
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(self._call(client, semaphore, index, request, messages, body, n=1, seed=s))
                for s in seeds
            ]
        return [t.result()[0] for t in tasks]

    async def _call(self, client, semaphore, index, request, messages, body, *, n: int, seed: int | None):
        import openai

        kwargs = dict(body)
        if n != 1:
            kwargs["n"] = n
        if seed is not None:
            kwargs["seed"] = seed
        async with semaphore:
            self.stats["calls"] += 1
            try:
                response = await client.chat.completions.create(model=self.model_id, messages=messages, **kwargs)
            except openai.APIStatusError as e:
                if e.status_code == 400 and _CONTEXT.search(f"{_detail(e)} {getattr(e, 'code', '') or ''}"):
                    raise OpenAIPromptTooLong(
                        f"request {index} to {self.base_url or 'the OpenAI API'} (model {self.model_id!r}, starting "
                        f"{request_start(request)!r}): the server refuses a prompt past the model's context "
                        f"(HTTP 400: {' '.join(_detail(e).split())[:300]})") from e
                hint = ""
                if e.status_code in (400, 422) and "extra_body" in kwargs:
                    hint = (
                        f" (the server may not accept the vLLM-style fields {sorted(kwargs['extra_body'])}; "
                        "continue_final_message, top_k, repetition_penalty and bad_words need vLLM or SGLang)"
                    )
                raise OpenAIEngineError(
                    f"request {index} to {self.base_url or 'the OpenAI API'} (model {self.model_id!r}) failed "
                    f"with HTTP {e.status_code}{' after ' + str(self.max_retries) + ' retries' if _retryable(e) else ''}"
                    f": {_detail(e)}{hint}"
                ) from e
            except openai.APIConnectionError as e:  # includes timeouts
                raise OpenAIEngineError(
                    f"request {index}: could not reach {self.base_url or 'the OpenAI API'} after "
                    f"{self.max_retries} retries: {e}"
                ) from e
            except (openai.APIResponseValidationError, ValueError) as e:  # a 200 whose body is not JSON
                raise self._not_a_completion(index, f"{type(e).__name__}: {e}") from None
        self._check_completion(index, response)
        stop = request.params.stop
        usage = getattr(response, "usage", None)
        tokens = usage.completion_tokens if usage is not None and len(response.choices) == 1 else None
        choices = sorted(response.choices, key=lambda c: c.index)
        return [
            Sample(
                text=truncate_at_stop(c.message.content or "", stop),
                finish_reason=c.finish_reason,
                num_tokens=tokens,
            )
            for c in choices
        ]

    def _check_completion(self, index: int, response: Any) -> None:
        """Refuse a reply that is not a chat completion with choices that each hold a message text."""
        if isinstance(response, (str, bytes)) or not isinstance(getattr(response, "choices", None), list):
            raise self._not_a_completion(index, f"got {_preview(response)}")
        if not response.choices:
            raise OpenAIEngineError(f"request {index}: {self.base_url or 'the OpenAI API'} returned no choices")
        if any(not isinstance(getattr(getattr(c, "message", None), "content", None), (str, type(None)))
               for c in response.choices):
            raise self._not_a_completion(index, "a choice without a message text")

    def _not_a_completion(self, index: int, what: str) -> "OpenAIEngineError":
        return OpenAIEngineError(f"request {index} to {self.base_url or 'the OpenAI API'} (model {self.model_id!r}): "
                                 f"the reply is not a chat completion ({what}); is that address an OpenAI-compatible "
                                 f"server?")

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()


def _preview(reply: Any, limit: int = 80) -> str:
    """The start of a reply that is not a completion, on one line."""
    text = reply.decode("utf-8", "replace") if isinstance(reply, bytes) else str(reply)
    text = " ".join(text.split())
    return f"{type(reply).__name__} {text[:limit]!r}" + ("…" if len(text) > limit else "")


def _first_error(group: BaseExceptionGroup) -> BaseException:
    for e in group.exceptions:
        if isinstance(e, BaseExceptionGroup):
            return _first_error(e)
        if not isinstance(e, asyncio.CancelledError):
            return e
    return group


def _detail(e: Any) -> str:
    """The server's own words from an ``openai.APIStatusError`` (its JSON body), else the message."""
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        body = body.get("detail") or body.get("message") or body.get("error") or body
    return str(body) if body else str(e.message)


def _retryable(e: Exception) -> bool:
    status = getattr(e, "status_code", None)
    return status in (408, 409, 429) or (status is not None and status >= 500)


__all__ = ["OpenAIEngine", "OpenAIEngineError", "OpenAIPromptTooLong", "image_to_data_url", "truncate_at_stop"]
