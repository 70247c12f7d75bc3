"""Property tests: whatever bytes a data file holds, reading it either succeeds with a consistent
RawSplit or raises the project's own error (MtkdError) -- never a stray ValueError/KeyError/..."""

from __future__ import annotations

import json
import math
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mtkd.data import RawSplit, read_split
from mtkd.errors import MtkdError
from mtkd.tasks import task_from_dict

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

TSV_FIELDS = {"id": "id", "text_a": "a", "text_b": "b", "label": "y"}
JSON_FIELDS = {"text_a": "text_a", "text_b": "text_b", "label": "label"}
LABELS = ["neg", "pos"]


def _spec(path: Path, head: str, fields: dict, fmt: str, **split):
    d = {"head": head, "fields": fields, "splits": {"train": {"path": str(path), "format": fmt, **split}}}
    if head == "classification":
        d["labels"] = LABELS
    return task_from_dict("P", d)


def _read(content: bytes, fmt: str, head="classification", fields=TSV_FIELDS, events=True, **split):
    """Read `content` as the train split; returns the RawSplit or None when an MtkdError was raised."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"f.{fmt}"
        path.write_bytes(content)
        spec = _spec(path, head, fields, fmt, **split)
        try:
            raw = read_split(spec, "train")
        except MtkdError as e:
            assert str(path) in str(e)  # every refusal names the file
            if events:
                event(f"refused: {type(e).__name__}")
            return None
    _check_consistent(raw, head, "text_b" in fields)
    if events:
        event("parsed")
    return raw


def _check_consistent(raw: RawSplit, head: str, has_b: bool) -> None:
    n = len(raw)
    assert n > 0 and len(raw.text_a) == n and len(set(raw.ids)) == n
    assert all(t.strip() for t in raw.text_a)
    if has_b:
        assert len(raw.text_b) == n and all(t.strip() for t in raw.text_b)
    assert len(raw.labels) == n
    if head == "classification":
        assert all(y in (0, 1) for y in raw.labels)
    else:
        assert all(isinstance(y, float) and math.isfinite(y) for y in raw.labels)


HEADS = st.sampled_from(["classification", "regression"])
FORMATS = st.sampled_from(["tsv", "csv", "json", "jsonl"])


@SETTINGS
@given(content=st.binary(max_size=300), fmt=FORMATS, head=HEADS)
def test_random_bytes(content, fmt, head):
    fields = TSV_FIELDS if fmt in ("tsv", "csv") else JSON_FIELDS
    _read(content, fmt, head, fields)


# TSV-like rows: a random number of fields of random unicode (tabs, quotes, CR, empty strings) with
# sometimes-valid labels and ids; half of the files are well formed apart from one damaged row
CELL = st.one_of(st.text(max_size=12), st.sampled_from(["", " ", '"', "\r", "pos", "neg", "1", "2.5", "nan", "\ufeff"]))
LABEL = st.one_of(st.sampled_from(LABELS + ["0", "3.25", "-1e3", "inf", "NaN", "", " pos "]), st.text(max_size=6))
WORD = st.text(
    st.characters(blacklist_characters="\t\n\r", blacklist_categories=("Cs",)), min_size=1, max_size=10
).filter(str.strip)
GOOD_LABEL = {
    "classification": st.sampled_from(LABELS + [" pos", "neg "]),
    "regression": st.one_of(st.floats(-1e6, 1e6).map(repr), st.integers(-9, 9).map(str)),
}


@st.composite
def tsv_files(draw):
    head = draw(HEADS)
    eol = draw(st.sampled_from(["\n", "\r\n"]))
    rows = []
    if draw(st.booleans()):  # anything goes
        header = draw(
            st.one_of(
                st.just(["id", "a", "b", "y"]), st.lists(st.sampled_from(["id", "a", "b", "y", "x", ""]), max_size=6)
            )
        )
        for i in range(draw(st.integers(0, 8))):
            if draw(st.booleans()):  # the right number of fields, random texts/labels/ids
                rows.append(
                    [draw(st.one_of(st.just(str(i)), st.sampled_from(["0", "1"]))), draw(CELL), draw(CELL), draw(LABEL)]
                )
            else:
                rows.append(draw(st.lists(CELL, max_size=7)))
    else:  # well formed, apart from (sometimes) one damaged row
        header = draw(st.permutations(["id", "a", "b", "y"]))
        for i in range(draw(st.integers(1, 8))):
            row = {"id": str(i), "a": draw(WORD), "b": draw(WORD), "y": draw(GOOD_LABEL[head])}
            rows.append([row[c] for c in header])
        if draw(st.integers(0, 2)) == 0:
            rows.insert(draw(st.integers(0, len(rows))), draw(st.lists(CELL, max_size=7)))
    text = eol.join("\t".join(r) for r in [header] + rows) + draw(st.sampled_from(["", eol]))
    data = text.encode("utf-8")
    if draw(st.integers(0, 9)) == 0:
        data += b"\x80"
    return data, head


@SETTINGS
@given(file=tsv_files(), skip=st.booleans())
def test_random_tsv_rows(file, skip):
    content, head = file
    raw = _read(content, "tsv", head, skip_malformed=skip)
    if raw is not None:
        assert all(len(reason) > 0 and line > 1 for line, reason in raw.skipped)
        if not skip:
            assert raw.skipped == []


def test_random_tsv_rows_can_parse():
    """The generator above is not all-refusal: a clean file of the same shape parses."""
    raw = _read(b'id\ta\tb\ty\n0\tx\ty\tpos\n1\t"q\tz\tneg\n', "tsv", events=False)
    assert raw is not None and raw.labels == [1, 0] and raw.text_a == ["x", '"q']


JSON_VALUE = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8)),
    lambda c: st.one_of(st.lists(c, max_size=3), st.dictionaries(st.text(max_size=4), c, max_size=3)),
    max_leaves=6,
)
GOOD_JSON_LABEL = {
    "classification": st.sampled_from(LABELS),
    "regression": st.one_of(st.floats(-1e6, 1e6), st.integers(-9, 9), st.just("3.5")),
}
ANY_RECORD = st.one_of(
    st.fixed_dictionaries(
        {
            "text_a": st.one_of(st.text(max_size=8), JSON_VALUE),
            "text_b": st.one_of(st.text(max_size=8), JSON_VALUE),
            "label": st.one_of(st.sampled_from(LABELS + [0, 1, 2.5, "3.5", None]), JSON_VALUE),
        }
    ),
    JSON_VALUE,
)


@SETTINGS
@given(data=st.data(), head=HEADS, lines=st.booleans(), junk=st.sampled_from(["", "", "", "\n", "x", "}", "\n\n{}"]))
def test_random_json_records(data, head, lines, junk):
    good = st.fixed_dictionaries({"text_a": WORD, "text_b": WORD, "label": GOOD_JSON_LABEL[head]})
    record = st.one_of(good, good, good, ANY_RECORD)
    records = data.draw(
        st.one_of(
            st.dictionaries(st.text(max_size=5), record, min_size=1, max_size=6),
            st.lists(record, min_size=1, max_size=6),
            JSON_VALUE,
        )
    )
    if lines:
        items = records.values() if isinstance(records, dict) else records if isinstance(records, list) else [records]
        text = "\n".join(json.dumps(r, allow_nan=True) for r in items) + junk
        raw = _read(text.encode("utf-8"), "jsonl", head, JSON_FIELDS)
    else:
        text = json.dumps(records, allow_nan=True) + junk
        raw = _read(text.encode("utf-8"), "json", head, JSON_FIELDS)
        if raw is not None and isinstance(records, dict) and not junk.strip():
            assert raw.ids == list(records)  # object of records: the ids are the keys, in file order
