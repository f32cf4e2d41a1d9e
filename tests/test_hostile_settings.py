"""Hostile round, settings: validated whole before any work (types, finite numbers, lists of strings), credentials
refused anywhere in the tree, what a run reads back (its manifest, its chunks' settings) checked by the same rules,
and no file a run or an export writes holds a secret-looking value."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from builder.cli import main
from builder.credentials import find_credentials
from builder.export import export
from builder.importer import import_upstream
from builder.upstream import EXAMPLE_DIR
from builder.relabel import relabel
from builder.settings import load_config
from builder.store import StoreError

REFUSED = {
    "stage1.engine_options={extra_body: {api_key: sk-abcdefghijklmnopqrst}}": "extra_body.api_key: a key that names",
    "stage1.engine_options={default_headers: {Authorization: Bearer abcdefghijk}}": "default_headers.Authorization",
    'stage1.engine_options={base_url: "http://me:pw@127.0.0.1:8000/v1"}': "a user name or password in a URL",
    "stage2.engine_options={hf-token: x}": "hf-token: a key that names",
    "stage2.engine_options={apiKey2: x}": "apiKey2: a key that names",
    "stage1.temperature=.inf": "temperature must be a finite number",
    "stage3.repetition_penalty=.inf": "repetition_penalty must be a finite number",
    "template_dir=5": "template_dir must be a folder path",
    "stage1.engine_options=abc": "engine_options must be a mapping",
    "stage3.cues=[{a: 1}]": "stage3.cues must be a list of strings",
    "stage3.bad_words=description": None,  # one string is one word: allowed, as `--set stage3.cues=Wait,`
    "prompts=theirs": "prompts must be one of project, authors",
}


@pytest.mark.parametrize("override", REFUSED)
def test_settings_are_refused_before_any_work_naming_the_setting(override):
    why = REFUSED[override]
    if why is None:
        assert load_config(overrides=[override]).stage3.bad_words == ("description",)
        return
    with pytest.raises(ValueError, match=why):
        load_config(overrides=[override])


def test_the_cli_refuses_bad_settings_in_one_line_before_writing_anything(tmp_path):
    run = tmp_path / "run"
    res = CliRunner().invoke(main, ["generate", str(run), "--source", str(EXAMPLE_DIR / "docci_mcq.csv"),
                                    "--set", "stage1.engine_options={api_key: sk-abcdefghijklmnopqrst}"])
    assert res.exit_code != 0 and "Traceback" not in res.output and "api_key" in res.output
    assert not run.exists()  # nothing written


def test_a_manifest_read_back_is_checked_before_relabelling(tmp_path):
    run = import_upstream(EXAMPLE_DIR, tmp_path / "run")
    manifest = json.loads(run.manifest_path.read_text())
    manifest["bad_words"] = "description"  # a string where a list of words is meant: the filter used to stop
    run.manifest_path.write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match=r"manifest.json: bad_words must be a list of strings, got 'description'"):
        relabel(run)


def test_no_file_of_a_run_or_its_export_holds_a_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abcdefghijklmnopqrstuvwx")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijklmnopqrstuvwxyz")
    run = import_upstream(EXAMPLE_DIR, tmp_path / "run")
    out = export(run.path, tmp_path / "out", configs=["mcq", "sft"])
    files = [p for p in [*run.path.rglob("*"), *out.rglob("*")] if p.is_file()]
    assert files
    for path in files:
        data = path.read_bytes()
        assert b"sk-abcdefghij" not in data and b"hf_abcdefghij" not in data, path
        if path.suffix == ".json":
            assert list(find_credentials(json.loads(data))) == [], path


def test_chunk_settings_read_back_go_through_the_settings_rules(tmp_path):
    import pyarrow.parquet as pq

    from builder.store import SETTINGS_KEY

    run = import_upstream(EXAMPLE_DIR, tmp_path / "run")
    path = run.files("expansion")[0]
    table = pq.read_table(path)
    settings = {"stage3": {"bad_words": [1, 2]}}
    pq.write_table(table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                  SETTINGS_KEY: json.dumps(settings).encode()}), path)
    with pytest.raises(StoreError, match=r"its chunks' settings\): stage3.bad_words must be a list of strings"):
        relabel(run)
