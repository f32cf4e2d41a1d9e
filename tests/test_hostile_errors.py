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


def test_errors_that_named_nothing_now_name_the_file(tmp_path):
    """`lpt card` on a run directory, a manifest holding a list, a garbage upstream file: one line naming the file
    (they were a ScannerError or AttributeError, a raw AttributeError and a codec error without a file)."""
    import os
    import shutil

    from click.testing import CliRunner

    from builder.cli import main
    from builder.upstream import EXAMPLE_DIR

    def lpt(*args):
        res = CliRunner().invoke(main, [str(a) for a in args])
        assert res.exit_code == 1 and "Traceback" not in res.output
        return res.output.strip().splitlines()[-1]

    assert CliRunner().invoke(main, ["import-upstream", "--example", str(tmp_path / "run")]).exit_code == 0
    assert "is not an export folder (no export_report.json)" in lpt("card", tmp_path / "run")
    shutil.copytree(tmp_path / "run", tmp_path / "listed")
    (tmp_path / "listed" / "manifest.json").write_text("[1, 2]")
    assert "manifest.json: a run's manifest is a JSON object, this holds a list" in lpt("status", tmp_path / "listed")
    up = tmp_path / "up"
    shutil.copytree(EXAMPLE_DIR, up)
    (up / "stage2_qwen2.5-vl-7b_simple_cots.jsonl").write_bytes(b'\n\xff\xfe garbage \x80\n')
    line = lpt("import-upstream", up, tmp_path / "run3")
    assert "stage2_qwen2.5-vl-7b_simple_cots.jsonl: line 2" in line and "not UTF-8" in line
    assert not os.path.exists(tmp_path / "run3")
