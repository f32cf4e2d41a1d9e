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
            request = self.rfile.read(int(self.headers["Content-Length"]))
            status, kind, body = answer["reply"](request) if "reply" in answer else (200, *answer["body"])
            self.send_response(status)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    class QuietServer(ThreadingHTTPServer):
        def handle_error(self, request, client_address):
            # a client that hangs up after its one-line error (the stage stops at once) would make socketserver
            # print a traceback to the stderr CliRunner captures: the test server's noise, not the command's
            pass

    httpd = QuietServer(("127.0.0.1", 0), Handler)
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


def test_an_engine_error_in_a_stage_names_the_stage_too(server, tmp_path):
    """The same bad reply through `lpt stage1`: the one line names the stage and its round as well as the server,
    the model and the request (the runtime puts them in front of the engine's message)."""
    from click.testing import CliRunner

    from builder.cli import main
    from builder.store import RunDir
    from helpers import make_source

    answer, url = server
    answer["body"] = BODIES["an HTML page"]
    run = RunDir(tmp_path / "run")
    make_source(run, tmp_path, n=2)
    res = CliRunner(env={"OPENAI_API_KEY": "test-not-a-secret"}).invoke(main, [
        "stage1", str(run.path), "-q", "--set", "stage1.engine=openai", "--set", "stage1.model=my-model",
        "--set", f"stage1.engine_options={{base_url: '{url}', max_retries: 0, server_kind: openai}}"])
    assert res.exit_code == 1 and "Traceback" not in res.output
    line = res.output.strip().splitlines()[-1]
    assert "stage1 (mcq): request 0 to " in line and url in line and "'my-model'" in line
    assert "not a chat completion" in line


def _completion(text: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [
        {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}]}).encode()


VLLM_400 = json.dumps({"object": "error", "type": "BadRequestError", "param": None, "code": 400, "message": (
    "This model's maximum context length is 2048 tokens. However, you requested 9056 tokens (9000 in the messages, "
    "56 in the completion). Please reduce the length of the messages or completion.")}).encode()


def test_a_servers_maximum_context_length_refusal_is_the_engines_prompt_too_long(server, tmp_path, monkeypatch):
    """An OpenAI-compatible server cannot be asked a prompt's length before it is sent: its HTTP 400 "maximum
    context length" is the measure, mapped to the same PromptTooLong the other engines raise, so that
    `--skip-bad` skips that input (counted, not retried) and the others are answered."""
    from click.testing import CliRunner

    import pyarrow as pa

    from builder.cli import main
    from builder.engines import PromptTooLong
    from builder.records import SOURCE
    from builder.runtime import skipped_inputs
    from builder.store import RunDir
    from helpers import make_source

    answer, url = server
    answer["reply"] = lambda body: ((400, "application/json", VLLM_400) if b"LONG-DESCRIPTION" in body
                                    else (200, "application/json", _completion("no questions here")))
    monkeypatch.setenv("OPENAI_API_KEY", "test-not-a-secret")
    engine = OpenAIEngine("my-model", base_url=url, max_retries=0, server_kind="openai")
    with pytest.raises(PromptTooLong, match=r"request 0 to .* \(model 'my-model', starting 'LONG-DESCRIPTION"
                                            r"'\): the server refuses a prompt past the model's context \(HTTP 400: "
                                            r"This model's maximum context length is 2048"):
        engine.generate([Request([{"role": "user", "content": "LONG-DESCRIPTION"}])])
    run = RunDir(tmp_path / "run")
    rows = make_source(run, tmp_path, n=3)
    rows[1]["description"] = "LONG-DESCRIPTION of a red bus"
    run.write_table("source", pa.Table.from_pylist(rows, schema=SOURCE))
    res = CliRunner(env={"OPENAI_API_KEY": "test-not-a-secret"}).invoke(main, [
        "stage1", str(run.path), "-q", "--skip-bad", "--set", "stage1.engine=openai", "--set", "stage1.model=my-model",
        "--set", "stage1.reformat=false",
        "--set", f"stage1.engine_options={{base_url: '{url}', max_retries: 0, server_kind: openai}}"])
    assert res.exit_code == 0, res.output
    assert list(skipped_inputs(run, "mcq")) == [rows[1]["image_id"]]
    assert set(run.read("mcq", ["image_id"]).column("image_id").to_pylist()) == {rows[0]["image_id"],
                                                                              rows[2]["image_id"]}


def test_an_export_of_only_empty_configs_and_a_card_of_a_run_say_so_in_one_line(tmp_path):
    """`lpt export RUN OUT --only dpo` when the run has no DPO pair: one line naming OUT, the config and why it is
    empty, and no OUT (it was a ScannerError: the card's YAML held `{}` for no config); an OUT holding an earlier
    export's config is still updated. `lpt card RUN_DIR`: one line saying it is not an export folder."""
    from click.testing import CliRunner

    import pyarrow as pa

    from builder.cli import main
    from builder.importer import import_upstream
    from builder.records import EXPANSION, SIMPLE_COT
    from builder.upstream import EXAMPLE_DIR

    run = import_upstream(EXAMPLE_DIR, tmp_path / "run")
    rows = run.read("simple_cot").to_pylist()
    for r in rows:  # no simple thought kept, no expansion: no trace, so no pair
        r["keep"], r["drop_reason"] = False, r["drop_reason"] or "dropped by the test"
    run.write_table("simple_cot", pa.Table.from_pylist(rows, schema=SIMPLE_COT), input_ids=run.done_inputs("simple_cot"))
    run.write_table("expansion", EXPANSION.empty_table(), input_ids=[])

    def lpt(*args):
        return CliRunner().invoke(main, [str(a) for a in args])

    res = lpt("export", run.path, tmp_path / "out", "--only", "dpo")
    assert res.exit_code == 1 and "Traceback" not in res.output and "ScannerError" not in res.output
    line = res.output.strip().splitlines()[-1]
    assert line == (f"Error: {tmp_path / 'out'}: nothing to export: dpo is empty (the run has no kept simple CoT or "
                    f"expansion)")
    assert not (tmp_path / "out").exists()
    assert lpt("export", run.path, tmp_path / "out", "--only", "mcq").exit_code == 0
    res = lpt("export", run.path, tmp_path / "out", "--only", "dpo")
    assert res.exit_code == 0 and "dpo: empty, not written" in res.output
    res = lpt("card", run.path)
    assert res.exit_code == 1 and res.output.strip().splitlines()[-1] == (
        f"Error: {run.path} is not an export folder (no export_report.json); `lpt export RUN {run.path}` writes one "
        f"with its card")
