"""Hostile round, sources: a CSV is parsed strictly; a quote left open, a stray quote or a repeated header is an
error naming the file and the line, never a silently merged record or a silently dropped column."""

from __future__ import annotations

import pytest
from PIL import Image

from builder.sources import SourceError, load_source


def _images(folder, n=3):
    for i in range(n):
        Image.new("RGB", (8, 8), (i * 60, 0, 0)).save(folder / f"img{i}.png")


def _csv(tmp_path, text):
    _images(tmp_path)
    path = tmp_path / "src.csv"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_well_formed_csv_with_a_quoted_multiline_description_loads(tmp_path):
    path = _csv(tmp_path, 'image,description\nimg0.png,"A red bus, parked\nnear a shop"\nimg1.png,A cat\n'
                          'img2.png,"A dog, ""Rex"""\n')
    rows = list(load_source(str(path)))
    assert [r["description"] for r in rows] == ["A red bus, parked\nnear a shop", "A cat", 'A dog, "Rex"']


@pytest.mark.parametrize("text, line, what", [
    ('image,description\nimg0.png,"A red bus\nimg1.png,A cat\nimg2.png,"A dog"\n', 2, "broken CSV quoting"),
    ('image,description\nimg0.png,"A red bus\nimg1.png,A cat\nimg2.png,A dog\n', 2, "broken CSV quoting"),
    ('image,description\nimg0.png,"A red bus\nimg1.png,A cat"\nimg2.png,A dog\n', 2, "a quote left open?"),
    ('image,description,description\nimg0.png,A bus,A car\n', 1, "column 'description' appears more than once"),
])
def test_broken_csv_is_an_error_naming_file_and_line(tmp_path, text, line, what):
    path = _csv(tmp_path, text)
    with pytest.raises(SourceError, match=rf"src\.csv: line {line}: .*{what}"):
        list(load_source(str(path)))
    with pytest.raises(SourceError):  # --skip-bad skips records, not a file whose structure is broken
        list(load_source(str(path), skip_bad=True))
