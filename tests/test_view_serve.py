"""`lpt view RUN --serve`: the viewer served page by page from the parquet files, driven in a real headless
Chromium (the authors' example outputs: 40 MCQs, 400 simple CoTs, 1,200 expansions), and the static file's
refusal above its size (a small limit through ``LPT_VIEW_STATIC_MAX``)."""

from __future__ import annotations

import html
import re
import threading
from urllib.parse import quote

import numpy as np
import pytest
from click.testing import CliRunner

from builder import assemble
from builder.cli import view_cmd
from builder.export import export
from builder.importer import import_upstream
from builder.serve import HOST, MAX_PAGE_SIZE, Viewer, build_index, make_server
from builder.view import ID_CHARS, IN_SFT
from builder.store import RunDir

from helpers import UPSTREAM  # noqa: E402
from test_view import _chromium, make_images, needs_browser, plugin  # noqa: E402,F401 (plugin: a fixture)


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    import_upstream(UPSTREAM, tmp / "run", images_dir=make_images(tmp / "images"))
    export(tmp / "run", tmp / "hub", options=assemble.AssembleOptions(dpo_pairs="all"))
    return tmp


def _serving(path):
    server = make_server(Viewer(build_index(path)), 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture(scope="module")
def urls(made):
    servers = {name: _serving(made / name) for name in ("run", "hub")}
    yield {name: f"http://{HOST}:{s.server_address[1]}/" for name, s in servers.items()}
    for s in servers.values():
        s.shutdown()
        s.server_close()


def _dom(tmp, url: str, state: str = "") -> dict:
    dom = _chromium(tmp, "--dump-dom", url + ("#" + state if state else "")).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-ready="1"' in body, "the page did not get its first page from the server"
    main = re.search(r'<main id="list"[^>]*>(.*?)</main>', dom, re.S).group(1)
    cards = [{k: html.unescape(v) for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', a)}
             | {"class": re.search(r'class="([^"]*)"', a).group(1)} for a in re.findall(r"<article [^>]*>", main)]
    return {"matches": int(re.search(r'data-matches="(\d+)"', body).group(1)), "cards": cards, "main": main,
            "dom": dom}


def test_the_server_listens_on_localhost_only_and_caps_a_page(made):
    viewer = Viewer(build_index(made / "run"), images=False)
    server = make_server(viewer, 0)
    try:
        assert server.server_address[0] == "127.0.0.1"
    finally:
        server.server_close()
    got = viewer.page({"size": "100000"})
    assert got["matches"] == 1600 and len(got["refs"]) == MAX_PAGE_SIZE < 1600
    assert viewer.page({"page": "999", "size": "200"})["page"] == got["pages"] == 8  # past the end: the last


@needs_browser
def test_served_first_page_shows_the_run_in_stage_order(urls, made, tmp_path):
    got = _dom(tmp_path, urls["run"])
    assert got["matches"] == 1600 and len(got["cards"]) == 50
    run = RunDir(made / "run")
    first_mcq = run.read("mcq").to_pylist()[0]
    first = min((r for r in run.read("simple_cot").to_pylist() if r["mcq_id"] == first_mcq["mcq_id"]),
                key=lambda r: r["sample_index"])
    assert got["cards"][0]["id"] == first["sample_id"][:12] and first_mcq["question"] in got["main"]
    assert '<mark class="cue">Wait,</mark><span class="add">' in got["main"]
    assert "data:image/jpeg;base64," in got["main"]  # a thumbnail made by the server for this page
    second = _dom(tmp_path, urls["run"], "page=2")
    assert second["matches"] == 1600 and {c["id"] for c in second["cards"]}.isdisjoint(c["id"] for c in got["cards"])


@needs_browser
def test_served_filters_and_search(urls, made, tmp_path):
    e = RunDir(made / "run").read("expansion").to_pylist()
    got = _dom(tmp_path, urls["run"], "stage=expansion&label=wrong")
    assert got["matches"] == sum(not r["correct"] for r in e) < 1600
    assert got["cards"] and all(c["stage"] == "expansion" and c["correct"] == "0" for c in got["cards"])
    dropped = _dom(tmp_path, urls["run"], "kept=" + quote("r:bad_word"))
    assert dropped["matches"] == sum(r["drop_reason"] == "bad_word" for r in e)
    target = next(r for r in e if "sclera" in r["continuation"])
    line = next(line for line in target["continuation"].splitlines() if "sclera" in line)
    at = line.index("sclera")
    phrase = line[max(0, at - 20):at + 20].strip()
    found = _dom(tmp_path, urls["run"], "stage=expansion&q=" + quote(phrase))
    assert target["expansion_id"][:12] in [c["id"] for c in found["cards"]]
    assert found["matches"] == sum(phrase.lower() in r["long_thought"].lower() for r in e) < 10
    assert '<mark class="hit">' in found["main"]
    none = _dom(tmp_path, urls["run"], "q=" + quote("no trace says this zqxj"))
    assert none["matches"] == 0 and "Nothing matches" in none["main"]


@needs_browser
def test_served_dpo_pairs_side_by_side(urls, tmp_path):
    got = _dom(tmp_path, urls["hub"], "view=pairs")
    assert got["matches"] == 779 and len(got["cards"]) == 50
    assert got["main"].count('class="side chosen"') == 50 and got["main"].count('class="side rejected"') == 50
    assert "exported dataset folder" in got["dom"]
    kind = _dom(tmp_path, urls["hub"], "view=pairs&kind=" + quote("X_O>X_X", safe=""))
    assert kind["matches"] == 18 and {c["kind"] for c in kind["cards"]} == {"X_O>X_X"}


def test_the_static_file_refuses_a_run_above_its_limit(made, tmp_path, monkeypatch):
    out = tmp_path / "big.html"
    monkeypatch.setenv("LPT_VIEW_STATIC_MAX", "1599")  # the run has 1,600 traces
    r = CliRunner().invoke(view_cmd, [str(made / "run"), "-o", str(out)])
    assert r.exit_code == 1 and not out.exists()
    last = r.output.strip().splitlines()[-1]
    assert "1,600 traces" in last and f"lpt view {made / 'run'} --serve" in last and "Traceback" not in r.output
    monkeypatch.setenv("LPT_VIEW_STATIC_MAX", "1600")
    r = CliRunner().invoke(view_cmd, [str(made / "run"), "-o", str(out), "--no-images"])
    assert r.exit_code == 0 and out.is_file()


def test_id_hash_is_the_same_for_the_same_id_whatever_the_array():
    import pyarrow as pa

    from builder.ids import id_hash

    ids = [f"{i:064x}" for i in range(500)] + ["short", "", "ünï", None]
    whole = id_hash(pa.array(ids, pa.string()))
    assert len(set(whole.tolist())) == len(ids) - 1  # None hashes as ""
    assert whole[-1] == whole[-3]
    sliced = id_hash(pa.chunked_array([pa.array(ids[:7]), pa.array(ids[7:])]).slice(3, 400))
    assert sliced.tolist() == whole[3:403].tolist()


def _static_order(data: dict) -> list[str]:
    """The trace list of the single file, as its traceStream orders it (unfiltered)."""
    S, E = data["simple"], data["exp"]
    after: dict[int, list[str]] = {}
    for j, i in enumerate(E["s"]):
        after.setdefault(i, []).append(E["id"][j])
    return [x for i in range(len(S["id"])) for x in [S["id"][i], *after.get(i, [])]]


@pytest.mark.parametrize("name", ["run", "hub"])
def test_the_served_trace_list_is_the_single_files(made, name):
    """Page after page, the server lists the traces in the single file's order, with the same flags."""
    from builder.view import collect

    static = collect(made / name, images=False)
    viewer = Viewer(build_index(made / name), images=False)
    served, flags = [], {}
    for page in range(1, 9):
        got = viewer.page({"page": str(page), "size": "200"})
        d = got["data"]
        for ref in got["refs"]:
            part = d["exp"] if ref % 2 else d["simple"]
            served.append(part["id"][ref // 2])
            flags[served[-1]] = part["f"][ref // 2]
    assert served == _static_order(static)
    S, E = static["simple"], static["exp"]
    assert flags == dict(zip(S["id"], S["f"])) | dict(zip(E["id"], E["f"]))
    assert got["data"]["agg"]["sOfM"] and viewer.page({"view": "mcqs"})["matches"] == 40


def _served_pairs(viewer) -> list[tuple[str, str, str, str]]:
    """Every pair the server lists, page after page: (kind, question, chosen id, rejected id)."""
    out = []
    for page in range(1, 100):
        got = viewer.page({"view": "pairs", "page": str(page), "size": "200"})
        d = got["data"]
        P, ids = d["pairs"], {0: d["simple"]["id"], 1: d["exp"]["id"]}
        for n in got["refs"]:
            out.append((d["tables"]["kind"][P["k"][n]], d["mcq"]["id"][P["m"][n]],
                        ids[P["c"][n] % 2][P["c"][n] // 2], ids[P["r"][n] % 2][P["r"][n] // 2]))
        if len(out) >= got["matches"]:
            return out
    raise AssertionError("more pages than expected")


def test_a_run_s_served_pairs_are_the_dpo_set_assembled_from_it(made):
    """A run's DPO pairs and SFT marks are matched to the index by their rows in the stage files, not by ids read
    back: every pair of ``assemble``'s dpo set (default options) is served once, with its kind, question and
    sides; the traces marked in SFT are the sft set's."""
    from collections import Counter

    viewer = Viewer(build_index(made / "run"), images=False)
    assert viewer.ix.P["rows"] is None  # no id held as text for a run
    served = _served_pairs(viewer)
    built = assemble.build_dpo(RunDir(made / "run"))
    assert len(served) == len(built) == viewer.page({"view": "pairs"})["matches"]
    short = lambda i: i[:ID_CHARS]  # noqa: E731 (the page shows ids cut to ID_CHARS)
    assert Counter(served) == Counter((r["kind"], short(r["mcq_id"]), short(r["chosen_id"]), short(r["rejected_id"]))
                                      for r in built)
    sft = {r.get("expansion_id") or r["sample_id"] for r in assemble.build_sft(RunDir(made / "run"))}
    marked = {viewer.ix.rows["short_thought"].take(viewer.ix.S["at"][[i]], ["sample_id"]).column(0)[0].as_py()
              for i in np.flatnonzero(viewer.ix.S["f"] & IN_SFT)}
    marked |= {viewer.ix.rows["long_thought"].take(viewer.ix.E["at"][[j]], ["expansion_id"]).column(0)[0].as_py()
               for j in np.flatnonzero(viewer.ix.E["f"] & IN_SFT)}
    assert marked == sft and viewer.ix.meta["sft_rows"] == len(sft) and viewer.ix.meta["dpo_rows"] == len(built)


@pytest.mark.parametrize("inherited", ["default", "ignored"])
def test_lpt_view_serve_prints_its_url_answers_and_stops_on_ctrl_c(made, inherited):
    """The command itself, in a subprocess: the URL on 127.0.0.1, a page as JSON, Ctrl-C (SIGINT) stops it.

    ``ignored``: started as a shell without job control starts a background job, with SIGINT ignored (Python
    then keeps it ignored unless the server sets its own handler); the suite itself may run that way."""
    import json
    import os
    import signal
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    handler = signal.SIG_IGN if inherited == "ignored" else signal.SIG_DFL
    proc = subprocess.Popen([sys.executable, "-m", "builder.cli", "view", str(made / "run"), "--serve", "--port", "0",
                             "--no-images"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, handler))
    try:
        line = next(line for line in proc.stdout if line.startswith("serving") or "Error" in line)
        url = re.search(r"http://127\.0\.0\.1:\d+/", line).group(0)
        with urllib.request.urlopen(url + "api/page?view=pairs&size=5", timeout=60) as r:
            got = json.loads(r.read())
        assert got["matches"] == 356 and len(got["refs"]) == 5
        with urllib.request.urlopen(url, timeout=60) as r:
            assert b'"serve":{"api":"/api/page"' in r.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0 and "stopped" in proc.stdout.read()
    finally:
        proc.kill()


def test_an_export_with_only_its_sets_is_served_as_exported_text(made, tmp_path):
    hub = tmp_path / "sets-only"
    export(made / "run", hub, configs=["sft", "dpo"])
    viewer = Viewer(build_index(hub), images=False)
    assert viewer.page({})["matches"] == 0
    got = viewer.page({"view": "pairs", "size": "5"})
    assert got["matches"] == 356 and len(got["refs"]) == 5
    pairs = got["data"]["pairs"]
    assert min(pairs["c"] + pairs["r"]) == -1 and all(pairs["ct"]) and all(pairs["rt"])  # the exported texts
    assert any("so no trace is shown" in n for n in viewer.ix.meta["notes"])


def test_a_plugin_config_is_a_filter_of_the_served_view(made, plugin):
    """`lpt view RUN --serve --plugin MODULE`: the plugin's config marks its traces and filters them."""
    import importlib

    importlib.import_module(plugin)
    want = {r["expansion_id"][:12] for r in assemble.build_sft(RunDir(made / "run"), assemble.AssembleOptions())
            if r["cot_type"] == "X_O"}
    viewer = Viewer(build_index(made / "run"), images=False)
    got = viewer.page({"set": "x:sft_x_o", "size": "200"})
    exp = got["data"]["exp"]
    assert got["matches"] == len(want) > 0 and all(r % 2 for r in got["refs"])
    assert {exp["id"][r // 2] for r in got["refs"]} == want
    assert got["data"]["sets"]["name"] == ["sft_x_o"]
    assert sorted(got["data"]["sets"]["e"][0]) == sorted(r // 2 for r in got["refs"])
