"""Hostile round, errors: what an OpenAI-compatible address answers that is not a chat completion (a 200 with bad
JSON, an HTML page, a choice without text) is one error naming the server, the model and the request, from a
REAL local HTTP server (stdlib, on 127.0.0.1) that answers such bodies."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from builder.engines import Request, SamplingParams
from builder.engines.openai_engine import OpenAIEngine, OpenAIEngineError

BODIES = {
    "truncated JSON": ("application/json", b'{"id": "x", "choices": [{"index": 0, '),
    "an HTML page": ("text/html", b"<html><body><h1>Welcome to nginx!</h1></body></html>"),
    "a choice without text": ("application/json", json.dumps(
        {"id": "x", "object": "chat.completion", "created": 0, "model": "m",
         "choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": {"a": 1}}}]}
    ).encode()),
}


@pytest.fixture
def server():
    answer = {}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.rfile.read(int(self.headers["Content-Length"]))
            kind, body = answer["body"]
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield answer, f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


@pytest.mark.parametrize("name", BODIES)
def test_a_reply_that_is_not_a_completion_names_server_model_and_request(server, name, monkeypatch):
    answer, url = server
    answer["body"] = BODIES[name]
    monkeypatch.setenv("OPENAI_API_KEY", "test-not-a-secret")
    engine = OpenAIEngine("my-model", base_url=url, max_retries=0, server_kind="openai")
    with pytest.raises(OpenAIEngineError) as e:
        engine.generate([Request([{"role": "user", "content": "hi"}], SamplingParams(max_new_tokens=4))])
    line = str(e.value)
    assert "\n" not in line and url in line and "'my-model'" in line and "request 0" in line
    assert "not a chat completion" in line
