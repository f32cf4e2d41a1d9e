"""The card's licences and provenance come from the run: the authors' example generations (MIT) with DOCCI's
descriptions and images (CC BY 4.0, cited), a DOCCI run, the demo's own drawn scenes, a user's own source."""

from __future__ import annotations

import json

from builder.importer import import_upstream
from builder.upstream import EXAMPLE_DIR
from builder.provenance import DOCCI, SAMPLE_DIR, origin, source_kind


def test_the_imported_example_is_the_authors_mit_generations_on_docci(tmp_path):
    import_upstream(EXAMPLE_DIR, tmp_path / "run")
    o = origin(json.loads((tmp_path / "run" / "manifest.json").read_text()))
    assert o.licenses == ["mit", "cc-by-4.0"] and o.source_datasets == ["google/docci"]
    assert any("authors' published example generations" in p for p in o.parts)
    assert o.citations == [DOCCI["bibtex"]]


def test_a_users_own_source_is_said_so_and_claims_nothing_of_docci(tmp_path):
    (tmp_path / "mine.jsonl").write_text("{}\n")
    o = origin({"source": {"spec": str(tmp_path / "mine.jsonl")}})
    assert "cc-by-4.0" not in o.licenses and not o.source_datasets and not o.citations
    assert "other" in o.licenses and any("user's own source (`mine.jsonl`)" in p for p in o.parts)


def test_docci_and_the_demo_sample_are_recognised_from_the_recorded_spec(tmp_path):
    (tmp_path / "docci").mkdir()
    (tmp_path / "docci" / "docci_descriptions.jsonlines").write_text("")
    assert source_kind(str(tmp_path / "docci")) == "docci"
    assert source_kind("docci:/gone/since") == "docci"
    assert source_kind(str(SAMPLE_DIR)) == "sample" and source_kind(f"folder:{SAMPLE_DIR}") == "sample"
    assert source_kind("/gone/mine.csv") == "own" and source_kind(None) == ""
    docci = origin({"source": {"spec": str(tmp_path / "docci")}})
    assert docci.licenses == ["apache-2.0", "cc-by-4.0"] and docci.source_datasets == ["google/docci"]
    sample = origin({"source": {"spec": str(SAMPLE_DIR)}})
    assert sample.licenses == ["apache-2.0"] and not sample.source_datasets
