"""`lpt view`: the HTML report of a run directory and of an exported folder, checked in a real headless Chromium
(the authors' example outputs: 40 MCQs, 400 simple CoTs, 1,200 expansions); `lpt show`.

The browser tests drive Debian's ``chromium`` by its own headless flags (``--dump-dom`` after a virtual-time
budget, ``--screenshot``); the page reads its filters and search from the URL hash, so a dumped DOM shows the
filtered result. They are skipped, saying why, only where no chromium is installed (CI installs it)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from urllib.parse import quote

import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from builder import assemble
from builder.cli import show_cmd, view_cmd
from builder.export import export
from builder.importer import import_upstream
from builder.stages.expansion import with_full_stop
from builder.stats import NotAnInput, open_input
from builder.view import build_html, collect
from builder.store import RunDir

from helpers import UPSTREAM  # noqa: E402

IDS = [f"train_{i:05d}" for i in range(5)]
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
needs_browser = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on this machine (CI installs Debian's "
                                                             "chromium in .ci/run): the browser checks cannot run")


def make_images(folder: Path) -> Path:
    """Stand-in photos for the example's DOCCI ids: shapes on a coloured ground (a screenshot shows them)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, image_id in enumerate(IDS):
        im = Image.new("RGB", (900, 640), (40 + 40 * i, 110, 170 - 25 * i))
        d = ImageDraw.Draw(im)
        for k in range(6):
            d.ellipse([60 + 120 * k, 80 + 50 * (k % 3), 220 + 120 * k, 260 + 50 * (k % 3)],
                      fill=((70 * k) % 255, 200 - 20 * k, (40 * i + 60) % 255))
        im.save(folder / f"{image_id}.jpg", quality=90)
    return folder


@pytest.fixture(scope="module")
def made(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("view")
    import_upstream(UPSTREAM, tmp / "run", images_dir=make_images(tmp / "images"))
    export(tmp / "run", tmp / "hub", options=assemble.AssembleOptions(dpo_pairs="all"))  # every candidate pair
    return tmp


# ---------------------------------------------------------------------------------------------- the data


def test_the_page_data_holds_every_record_once_and_rebuilds_each_long_thought(made):
    run = RunDir(made / "run")
    data = collect(run)
    assert data["meta"]["kind"] == "run" and data["meta"]["label"] == f"run directory {made / 'run'}"
    assert (len(data["mcq"]["id"]), len(data["simple"]["id"]), len(data["exp"]["id"])) == (40, 400, 1200)
    assert data["meta"]["counts"]["expansion"]["kept"] == 517  # builder.records.tally
    assert all(src and src.startswith("data:image/jpeg;base64,") for src in data["images"]["src"])
    assert all(data["images"]["desc"])  # the run's source descriptions

    # the page shows an expansion as (the simple thought joined as stage 3 joins it) + cue + what was added:
    # that must be exactly the long thought, with the highlighted part starting at the cue
    S, E, T = data["simple"], data["exp"], data["tables"]
    records = {r["expansion_id"][:12]: r for r in run.read("expansion").to_pylist()}
    for j in range(len(E["id"])):
        r = records[E["id"][j]]
        thought, sep = S["t"][E["s"][j]], T["sep"][E["sep"][j]]
        pre = E["pre"][j] if E["pre"][j] is not None else with_full_stop(thought) + sep  # as the page does
        assert pre + E["x"][j] == r["long_thought"]
        assert E["x"][j].startswith(r["cue"]) and E["x"][j][len(r["cue"]):] in r["continuation"]
        assert E["b"][j] == r["bad_word"] and T["reason"][E["r"][j]] == r["drop_reason"]
    assert sum(p is None for p in E["pre"]) == len(E["pre"])  # the simple thought is never stored twice here

    # DPO pairs: those of builder.assemble, each side a reference to its record
    pairs = assemble.build_dpo(run, assemble.AssembleOptions())
    assert Counter(T["kind"][k] for k in data["pairs"]["k"]) == Counter(p["kind"] for p in pairs)
    assert min(data["pairs"]["c"] + data["pairs"]["r"]) >= 0 and not any(data["pairs"]["ct"])
    sft_ids = {r["expansion_id"] or r["sample_id"] for r in assemble.build_sft(run)}
    marked = [S["id"][i] for i in range(400) if S["f"][i] & data["flags"]["sft"]]
    marked += [E["id"][j] for j in range(1200) if E["f"][j] & data["flags"]["sft"]]
    assert sorted(marked) == sorted(i[:12] for i in sft_ids)


def test_an_export_gives_the_same_records_and_its_own_sets(made):
    from_run, from_export = collect(made / "run"), collect(made / "hub")
    assert from_export["meta"]["kind"] == "export" and "exported dataset folder" in from_export["meta"]["label"]
    for part in ("simple", "exp"):
        for col in ("id", "t", "x", "f") if part == "simple" else ("id", "x", "f", "b"):
            if col in from_run[part]:
                assert from_run[part][col] == from_export[part][col], (part, col)
    assert len(from_export["pairs"]["k"]) == 779 and not any(from_export["pairs"]["ct"])
    assert from_export["meta"]["dpo_from"] == "the export's dpo config"
    assert all(from_export["images"]["src"])  # from the export's images config
    assert all(from_export["images"]["desc"])  # read back from stage 3's prompts


def test_pages_are_self_contained(made):
    page = build_html(made / "hub")
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched: no CDN, no server
    assert "<link" not in page and "@import" not in page and "<script src" not in page
    data = re.search(r'<script id="lpt-data" type="application/json">(.*?)</script>', page, re.S).group(1)
    assert "<" not in data and json.loads(data)["meta"]["kind"] == "export"  # embedded once, safely
    assert page.count('id="lpt-data"') == 1


def test_images_not_on_this_machine_are_said_so(made, tmp_path):
    import_upstream(UPSTREAM, tmp_path / "run")  # no --images-dir: the DOCCI paths do not exist here
    data = collect(tmp_path / "run")
    assert data["images"]["src"] == [None] * 5
    assert "none of the images is on this machine" in data["meta"]["notes"]
    assert collect(made / "run", images=False)["images"]["src"] == [None] * 5


def test_the_input_kind_is_detected_and_said(made, tmp_path):
    with pytest.raises(NotAnInput, match="neither a run directory"):
        open_input(made / "images")
    runner = CliRunner()
    r = runner.invoke(view_cmd, [str(made / "run"), "-o", str(tmp_path / "r.html"), "--page-size", "20"])
    assert r.exit_code == 0, r.output
    assert f"reading the run directory {made / 'run'}" in r.output and (tmp_path / "r.html").is_file()
    assert "const PAGE_SIZE = 20;" in (tmp_path / "r.html").read_text(encoding="utf-8")
    r = runner.invoke(view_cmd, [str(made / "hub"), "-o", str(tmp_path / "h.html"), "--no-images"])
    assert r.exit_code == 0 and "reading the exported dataset folder" in r.output
    r = runner.invoke(view_cmd, [str(made / "images")])
    assert r.exit_code == 1 and "neither a run directory" in r.output and "Traceback" not in r.output


# ------------------------------------------------------------------------------------------- the browser


def _chromium(tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--hide-scrollbars", f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=15000", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-2000:]
    return res


def _dom(tmp: Path, page: Path, state: str = "") -> dict:
    """The rendered list of ``page#state``: match count, cards (their data- attributes), and the list's text."""
    dom = _chromium(tmp, "--dump-dom", page.as_uri() + ("#" + state if state else "")).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    assert 'data-ready="1"' in body, "the page script did not finish"
    main = re.search(r'<main id="list"[^>]*>(.*?)</main>', dom, re.S).group(1)
    cards = [{k: html.unescape(v) for k, v in re.findall(r'data-([a-z]+)="([^"]*)"', a)}
             | {"class": re.search(r'class="([^"]*)"', a).group(1)} for a in re.findall(r"<article [^>]*>", main)]
    return {"matches": int(re.search(r'data-matches="(\d+)"', body).group(1)), "cards": cards, "main": main,
            "dom": dom}


@pytest.fixture(scope="module")
def pages(made):
    out = {}
    for name in ("run", "hub"):
        out[name] = made / f"{name}.html"
        out[name].write_text(build_html(made / name), encoding="utf-8")
    return out


@needs_browser
def test_browser_renders_the_traces_of_a_run(pages, made, tmp_path):
    got = _dom(tmp_path, pages["run"])
    assert got["matches"] == 1600  # 400 simple thoughts + 1,200 expansions
    assert len(got["cards"]) == 50  # one page
    assert {c["stage"] for c in got["cards"]} == {"simple", "expansion"}
    run = RunDir(made / "run")
    first_mcq = run.read("mcq").to_pylist()[0]  # the page follows stage 1's order: image, then question
    first = min((r for r in run.read("simple_cot").to_pylist() if r["mcq_id"] == first_mcq["mcq_id"]),
                key=lambda r: r["sample_index"])
    assert got["cards"][0]["id"] == first["sample_id"][:12] and first_mcq["question"] in got["main"]
    assert "run directory" in got["dom"] and 'class="mcq-head"' in got["main"] and "data:image/jpeg;base64," in got["main"]
    assert '<mark class="cue">Wait,</mark><span class="add">' in got["main"]  # the added text is highlighted


@needs_browser
def test_browser_renders_an_export_and_its_dpo_pairs_side_by_side(pages, tmp_path):
    got = _dom(tmp_path, pages["hub"], "view=pairs")
    assert got["matches"] == 779 and len(got["cards"]) == 50
    assert all("pair" in c["class"] for c in got["cards"])
    assert got["main"].count('class="side chosen"') == 50 and got["main"].count('class="side rejected"') == 50
    assert "exported dataset folder" in got["dom"]
    kind = _dom(tmp_path, pages["hub"], "view=pairs&kind=" + quote("X_O>X_X", safe=""))
    assert kind["matches"] == 18 and {c["kind"] for c in kind["cards"]} == {"X_O>X_X"}


@needs_browser
def test_browser_filters_change_what_is_shown(pages, made, tmp_path):
    e = RunDir(made / "run").read("expansion").to_pylist()
    got = _dom(tmp_path, pages["run"], "stage=expansion&label=wrong")
    assert got["matches"] == sum(not r["correct"] for r in e) < 1600
    assert got["cards"] and all(c["stage"] == "expansion" and c["correct"] == "0" for c in got["cards"])
    dropped = _dom(tmp_path, pages["run"], "kept=" + quote("r:bad_word"))
    assert dropped["matches"] == sum(r["drop_reason"] == "bad_word" for r in e)
    assert all(c["kept"] == "0" for c in dropped["cards"]) and "dropped · bad word" in dropped["main"]
    typed = _dom(tmp_path, pages["run"], "type=X_O&qt=" + quote("Counting and Quantification"))
    samples = {r["sample_id"]: r for r in RunDir(made / "run").read("simple_cot").to_pylist()}
    assert typed["matches"] == sum(r["correct"] and not r["simple_correct"]
                                   and samples[r["sample_id"]]["question_type"] == "Counting and Quantification"
                                   for r in e) > 0
    assert {c["type"] for c in typed["cards"]} == {"X_O"}


@needs_browser
def test_browser_search_finds_a_known_trace(pages, made, tmp_path):
    e = RunDir(made / "run").read("expansion").to_pylist()
    target = next(r for r in e if "sclera" in r["continuation"])  # a word of one continuation
    line = next(line for line in target["continuation"].splitlines() if "sclera" in line)
    at = line.index("sclera")
    phrase = line[max(0, at - 20):at + 20].strip()
    got = _dom(tmp_path, pages["run"], "stage=expansion&q=" + quote(phrase))
    assert target["expansion_id"][:12] in [c["id"] for c in got["cards"]]
    assert got["matches"] == sum(phrase.lower() in r["long_thought"].lower() for r in e) < 10
    assert '<mark class="hit">' in got["main"]
    none = _dom(tmp_path, pages["run"], "q=" + quote("no trace says this zqxj"))
    assert none["matches"] == 0 and not none["cards"] and "Nothing matches" in none["main"]


_PROBE = r"""<script>
(async () => {
  const out = {}, wait = ms => new Promise(r => setTimeout(r, ms));
  const more = document.querySelector("button.more[data-pre]"), j = more.dataset.pre;
  more.click(); await wait(50);
  out.expanded = !document.querySelector(`button.more[data-pre="${j}"]`);
  const q = document.getElementById("f-q"); q.value = "Sclera"; q.dispatchEvent(new Event("input")); await wait(500);
  out.search = [+document.body.dataset.matches, location.hash];
  const stage = document.getElementById("f-stage"); stage.value = "expansion";
  stage.dispatchEvent(new Event("change", {bubbles: true})); await wait(50);
  out.stage = [+document.body.dataset.matches, location.hash];
  document.querySelector('.tab[data-view="pairs"]').click(); await wait(50);
  out.tab = [document.body.dataset.view, +document.body.dataset.matches];
  document.getElementById("f-reset").click(); await wait(50); document.activeElement.blur();
  document.dispatchEvent(new KeyboardEvent("keydown", {key: "ArrowRight"})); await wait(50);
  out.next = location.hash;
  document.querySelector("img[data-img]").click(); out.lightbox = !document.getElementById("lightbox").hidden;
  document.body.dataset.probe = JSON.stringify(out);
})().catch(e => { document.body.dataset.probe = JSON.stringify({error: String(e)}); });
</script></body>"""


@needs_browser
def test_browser_controls_work(pages, made, tmp_path):
    """Clicking and typing (events dispatched by a script appended to a copy of the page) filter the list and
    keep the address in step."""
    page = tmp_path / "probe.html"
    page.write_text(pages["run"].read_text(encoding="utf-8").replace("</body>", _PROBE), encoding="utf-8")
    dom = _chromium(tmp_path, "--dump-dom", page.as_uri()).stdout
    out = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', dom).group(1)))
    e = RunDir(made / "run").read("expansion").to_pylist()
    s = RunDir(made / "run").read("simple_cot").to_pylist()
    assert out["expanded"] is True and out["lightbox"] is True
    in_e = sum("sclera" in r["long_thought"].lower() for r in e)
    assert out["search"] == [in_e + sum("sclera" in r["thought"].lower() for r in s), "#q=sclera"]
    assert out["stage"] == [in_e, "#stage=expansion&q=sclera"]
    assert out["tab"][0] == "pairs" and 0 < out["tab"][1] < 779  # the search stays on when the tab changes
    assert out["next"] == "#view=pairs&page=2"


@needs_browser
def test_browser_screenshot_is_not_blank(pages, tmp_path):
    shot = tmp_path / "view.png"
    _chromium(tmp_path, "--window-size=1280,1600", f"--screenshot={shot}", pages["run"].as_uri())
    with Image.open(shot) as im:
        assert im.size == (1280, 1600)
        small = im.convert("RGB").resize((320, 400))
        colours = small.getcolors(maxcolors=1 << 16)
        assert colours is None or len(colours) > 200  # text, chips, highlights, the thumbnail
        grey = small.convert("L")
        assert max(grey.histogram()) < 0.9 * 320 * 400  # not one flat colour
        lo, hi = grey.getextrema()
        assert hi - lo > 150  # dark text on a light page


# ----------------------------------------------------------------------------------------------- lpt show


def test_show_prints_rows_readably(made):
    runner = CliRunner()
    r = runner.invoke(show_cmd, [str(made / "hub"), "sft", "-n", "2", "--max-chars", "120"])
    assert r.exit_code == 0, r.output
    assert "sft · row 1 of 112" in r.output and "sft · row 2 of 112" in r.output and "row 3" not in r.output
    assert "system: " in r.output and "user: " in r.output and "assistant: " in r.output
    assert "characters folded" in r.output
    r = runner.invoke(show_cmd, [str(made / "hub"), "images", "-n", "1"])
    assert r.exit_code == 0 and "[image train_00000]" in r.output and "KB JPEG" in r.output
    r = runner.invoke(show_cmd, [str(made / "hub"), "mcq", "--start", "39"])
    assert "mcq · row 40 of 40" in r.output and "row 41" not in r.output
    r = runner.invoke(show_cmd, [str(made / "hub"), "nope"])
    assert r.exit_code == 1 and "no config 'nope'" in r.output and "raw_expansion" in r.output


# ------------------------------------------------------------------------------------- a plugin's config

PLUGIN = '''from builder import assemble
from builder.dataset_configs import SFT_FEATURES, ConfigSpec, register

register(ConfigSpec("sft_x_o", SFT_FEATURES,
                    lambda cfg: (r for r in assemble.build_sft(cfg.run(), cfg.options) if r["cot_type"] == "X_O"),
                    "SFT rows that start from a wrong simple thought (a plugin's config)"))
'''


@pytest.fixture
def plugin(tmp_path, monkeypatch):
    """A plugin module named with ``--plugin``; its config is unregistered afterwards."""
    from builder.dataset_configs import CONFIGS, register

    (tmp_path / "lpt_view_plugin_xo.py").write_text(PLUGIN, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lpt_view_plugin_xo"
    CONFIGS.pop("sft_x_o", None)
    register(CONFIGS["sft"])  # rebuild the builder's configs without it
    import sys

    sys.modules.pop("lpt_view_plugin_xo", None)


def _page_data(page: Path) -> dict:
    text = re.search(r'<script id="lpt-data" type="application/json">(.*?)</script>', page.read_text("utf-8"), re.S)
    return json.loads(text.group(1))


def test_a_plugin_config_is_a_filter_of_the_view(made, plugin, tmp_path):
    """`lpt view RUN --plugin MODULE` builds the plugin's config from the run and marks its traces; an export
    that holds the config shows it even where the plugin is not loaded."""
    page = tmp_path / "plugin.html"
    res = CliRunner().invoke(view_cmd, [str(made / "run"), "-o", str(page), "--no-images", "--plugin", plugin])
    assert res.exit_code == 0, res.output
    data = _page_data(page)
    assert data["sets"]["name"] == ["sft_x_o"]
    # independently: the X→O expansions the default SFT set takes
    want = {r["expansion_id"] for r in assemble.build_sft(RunDir(made / "run"), assemble.AssembleOptions())
            if r["cot_type"] == "X_O"}
    assert data["sets"]["rows"] == [len(want)] and len(want) > 0 and data["sets"]["s"] == [[]]
    full_ids = [r["expansion_id"] for r in RunDir(made / "run").read("expansion").to_pylist()]
    shown = {data["exp"]["id"][j] for j in data["sets"]["e"][0]}
    assert shown == {i[:12] for i in want} and all(any(f.startswith(s) for f in full_ids) for s in shown)

    # an export with the plugin's config, viewed in a process that has no plugin: the folder is enough
    from builder.dataset_configs import CONFIGS

    hub = tmp_path / "hub"
    export(made / "run", hub, configs=["sft", "raw_mcq", "raw_simple_cot", "raw_expansion", "sft_x_o"])
    CONFIGS.pop("sft_x_o")
    got = collect(hub, images=False)
    assert got["sets"]["name"] == ["sft_x_o"] and got["sets"]["rows"] == [len(want)]
    assert {got["exp"]["id"][j] for j in got["sets"]["e"][0]} == shown

    if CHROMIUM is None:
        pytest.skip("no chromium on this machine (CI installs it): the page itself is not checked")
    dom = _dom(tmp_path, page, "set=" + quote("x:sft_x_o", safe=""))
    assert dom["matches"] == len(want) and {c["type"] for c in dom["cards"]} == {"X_O"}
    assert dom["main"].count(">in sft_x_o</span>") == len(dom["cards"])
    assert "sft_x_o" in re.search(r'<select id="f-set".*?</select>', dom["dom"], re.S).group(0)
