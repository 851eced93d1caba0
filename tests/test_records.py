"""Typed records: every record type reads back what it writes, a misfit names its field, the file envelope."""

from __future__ import annotations

import dataclasses
import json
import math
import typing

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from testtime.arc.records import Candidate, Cut, Grid, TaskRecord, TestResult
from testtime.lm.records import PromptResult
from testtime.records import SCHEMA, Record, RecordError, load_record, seal, unseal


def values(hint: typing.Any) -> st.SearchStrategy:
    """Any JSON-able value of a record field's type hint (a record type: any record of it)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint == Grid:  # rectangular and not empty, as every reader may assume
        return st.integers(1, 3).flatmap(lambda w: st.lists(st.lists(st.integers(0, 9), min_size=w, max_size=w),
                                                            min_size=1, max_size=3))
    if isinstance(hint, type) and issubclass(hint, Record):
        return records(hint)
    if origin is typing.Literal:
        return st.sampled_from(args)
    if origin is list:
        return st.lists(values(args[0]), max_size=3)
    if origin is not None and type(None) in args:
        return st.none() | values(next(a for a in args if a is not type(None)))
    return {str: st.text(max_size=6), int: st.integers(-2 ** 40, 2 ** 40), bool: st.booleans(),
            float: st.floats(allow_nan=False, allow_infinity=False)}[hint]


@st.composite
def records(draw, cls: type[Record]) -> Record:
    """A record of `cls` with every field drawn, None where allowed (not where its status needs a value)."""
    hints = typing.get_type_hints(cls)
    status = draw(values(hints["status"])) if "status" in hints else None
    needed = cls.required_when.get(status, ())
    fields = {}
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if f.name in needed:
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        fields[f.name] = status if f.name == "status" else draw(values(hint))
    return cls(**fields)


@pytest.mark.parametrize("cls", [TaskRecord, TestResult, Candidate, PromptResult])
def test_every_record_type_reads_back_what_it_writes(cls):
    @given(records(cls))
    def round_trip(record):
        data = record.to_json()
        assume(not cls.problems(data))  # e.g. an ok prompt over 0 bytes: a record no reader may read
        text = json.dumps(data, allow_nan=False)  # plain JSON: no NaN, no objects
        assert cls.from_json(json.loads(text)) == record
    round_trip()


def ok_task() -> dict:
    return TaskRecord.from_json({
        "task_id": "t1", "status": "ok", "fits": True, "ttt": {"enabled": False, "shared": False},
        "predict": {"seconds": 0.5, "prompts": 8, "unparsed": 0, "unfit": 0}, "seconds": 1.0,
        "tests": [{"attempts": [[[1, 2]]], "candidates": [{"grid": [[1, 2]], "votes": 3, "poe": -1.5}]}]}).to_json()


def test_a_record_that_does_not_fit_names_the_field():
    bad = ok_task()
    bad["tests"][0]["candidates"][0]["votes"] = "3"
    with pytest.raises(RecordError, match=r"record\.tests\[0\]\.candidates\[0\]\.votes: expected an integer"):
        TaskRecord.from_json(bad)
    bad = ok_task()
    bad["tests"][0]["attempts"] = [[[1, 2], [3]]]
    with pytest.raises(RecordError, match=r"record\.tests\[0\]: a grid is empty or ragged"):
        TaskRecord.from_json(bad)
    with pytest.raises(RecordError, match="record: expected an object, got list"):
        TaskRecord.from_json([1, 2])


def test_what_a_status_needs_must_be_there_and_not_null():
    ok = ok_task()
    del ok["ttt"]
    assert TaskRecord.problems(ok) == ["record.ttt: missing"]
    ok["ttt"] = None
    assert TaskRecord.problems(ok) == ["record.ttt: expected an object, got NoneType None"]
    failed = {"task_id": "t1", "status": "failed", "tests": [], "seconds": 0.0, "traceback": ""}
    assert TaskRecord.problems(failed) == ["record.error: missing"]  # but no ttt, predict or fits
    assert not TaskRecord.problems({**failed, "error": "RuntimeError: boom"})
    prompt = {"prompt_id": "p", "domain": "", "status": "ok", "seconds": 1.0, "bits": 8.0, "bytes": 0, "steps": 0,
              "select_ms": 0.0, "nn_select_ms": 0.0}
    assert PromptResult.problems(prompt) == ["record.bytes: 0, not a positive count"]
    del prompt["seconds"]
    assert PromptResult.problems(prompt) == ["record.seconds: missing"]  # required, though it has a default


def test_none_is_not_written_and_other_keys_are_ignored():
    record = TaskRecord.from_json({**ok_task(), "error": None, "kept by a newer version": 1})
    assert record.error is None and record.tests[0].candidates[0].transforms is None
    data = record.to_json()
    assert "error" not in data and "kept by a newer version" not in data
    assert data["tests"][0]["candidates"][0] == {"grid": [[1, 2]], "votes": 3, "poe": -1.5}


def test_a_record_this_run_made_is_read_back_without_the_check():
    made = dataclasses.replace(TaskRecord.from_json(ok_task()), cut=Cut(at="training", seconds=math.nan))
    with pytest.raises(RecordError, match=r"record\.cut\.seconds: expected a number"):
        TaskRecord.from_json(made.to_json())  # refused in a file: the task would run again
    assert TaskRecord.from_json(made.to_json(), trusted=True).cut.at == "training"  # never stops the run


def test_the_envelope_carries_the_schema_and_fingerprint_beside_the_record():
    record = {"task_id": "t1", "status": "ok"}
    sealed = seal(record, "0123456789abcdef")
    assert sealed == {"schema": SCHEMA, "fingerprint": "0123456789abcdef", **record}
    assert unseal(sealed).record == record and unseal(sealed).fingerprint == "0123456789abcdef"
    assert seal(record, None) == {"schema": SCHEMA, **record}  # a run without a fingerprint (none opened)
    old = {**record, "fingerprint": "0123456789abcdef"}  # a file from before the envelope: schema 1
    assert (unseal(old).schema, unseal(old).fingerprint, unseal(old).record) == (1, "0123456789abcdef", record)
    with pytest.raises(RecordError, match=f"record.schema: {SCHEMA + 1}, written by a newer testtime"):
        unseal({**sealed, "schema": SCHEMA + 1})
    for bad, message in (({**sealed, "schema": "2"}, "record.schema: expected a version"),
                         ({**sealed, "fingerprint": 7}, "record.fingerprint: expected a string"),
                         ([sealed], "expected an object")):
        with pytest.raises(RecordError, match=message):
            unseal(bad)
    with pytest.raises(ValueError, match="envelope's keys"):
        seal({**record, "schema": 1}, None)


def test_load_record_reads_a_file_or_says_why_not(tmp_path):
    path = tmp_path / "t1.json"
    with pytest.raises(RecordError, match="missing"):
        load_record(path, TaskRecord)
    path.write_text("{not json")
    with pytest.raises(RecordError, match="not JSON"):
        load_record(path, TaskRecord)
    path.write_text(json.dumps(seal(ok_task(), "0123456789abcdef")))
    assert load_record(path, TaskRecord) == TaskRecord.from_json(ok_task())
    path.write_text(json.dumps(seal({**ok_task(), "seconds": "slow"}, None)))
    with pytest.raises(RecordError, match="record.seconds: expected a number"):
        load_record(path, TaskRecord)
