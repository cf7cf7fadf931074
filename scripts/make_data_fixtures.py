#!/usr/bin/env python3
"""Writes the small parquet fixtures of the data tests with pyarrow (the writer Hugging Face
`datasets` uses), from the Austen texts in assets/:

- tests/fixtures/wikitext-mini/wikitext-103-raw-v1/{train,validation,test}-00000-of-00001.parquet:
  WikiText-103's layout on the hub (Salesforce/wikitext): one string column `text`, one row
  per line, blank lines as empty rows, articles opened by " = Title = " rows and sections by
  " = = Section = = " rows; snappy, dictionary encoding, several row groups.
- tests/fixtures/data/rows.parquet: columns id (int64), title and text (strings, one null).
- tests/fixtures/data/zstd.parquet: a zstd-compressed file (a codec this build does not read).
- tests/fixtures/data/pyarrow-rows/NAME.jsonl: the rows of each snappy parquet file as
  pyarrow reads them back (the reference for alignscope's parquet reader).

    python3 scripts/make_data_fixtures.py      # needs pyarrow
"""
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parent.parent


def chapters(name, first, count):
    text = (ROOT / "assets/austen" / f"{name}.txt").read_text()
    parts = re.split(r"\n\s*CHAPTER [IVXLC0-9]+\.?\s*\n", text)[1:]
    return parts[first:first + count]


def wikitext_rows(book, title, first, count):
    rows = []
    for i, ch in enumerate(chapters(book, first, count)):
        paras = [" ".join(p.split()) for p in ch.split("\n\n") if p.strip()]
        rows += ["", f" = {title} , chapter {first + i + 1} = \n", ""]
        for j, p in enumerate(paras[:12]):
            if j == 6:
                rows += [" = = Later = = \n", ""]
            rows += [f" {p} \n", ""]
    return rows


def write(path, table, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, **kw)
    print(path.relative_to(ROOT), path.stat().st_size, "bytes,", table.num_rows, "rows")
    if kw.get("compression", "snappy") == "snappy":
        mirror = ROOT / "tests/fixtures/data/pyarrow-rows" / path.with_suffix(".jsonl").name
        mirror.parent.mkdir(parents=True, exist_ok=True)
        with open(mirror, "w") as f:
            for row in pq.read_table(path).to_pylist():
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def main():
    wt = ROOT / "tests/fixtures/wikitext-mini/wikitext-103-raw-v1"
    for split, book, title, first, count in [
        ("train", "emma", "Emma", 0, 6),
        ("validation", "northanger_abbey", "Northanger Abbey", 0, 2),
        ("test", "mansfield_park", "Mansfield Park", 0, 2),
    ]:
        rows = wikitext_rows(book, title, first, count)
        write(wt / f"{split}-00000-of-00001.parquet", pa.table({"text": pa.array(rows, pa.string())}), row_group_size=64)
    paras = [" ".join(p.split()) for p in chapters("sense_and_sensibility", 0, 1)[0].split("\n\n") if p.strip()][:8]
    texts = paras[:3] + [None] + paras[3:]
    table = pa.table({
        "id": pa.array(range(len(texts)), pa.int64()),
        "title": pa.array([f"paragraph {i}" for i in range(len(texts))], pa.string()),
        "text": pa.array(texts, pa.string()),
    })
    write(ROOT / "tests/fixtures/data/rows.parquet", table, row_group_size=4)
    write(ROOT / "tests/fixtures/data/zstd.parquet", pa.table({"text": pa.array(paras[:2], pa.string())}), compression="zstd")


if __name__ == "__main__":
    main()
