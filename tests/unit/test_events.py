"""Canonical events: validation messages, adapters, dead letters, pseudonyms."""

from __future__ import annotations

import gzip
import hashlib
import hmac
import warnings
from datetime import UTC, datetime
from pathlib import Path

import orjson
import polars as pl
import pytest
from pydantic import ValidationError

from crmbet.config import InsecureKeyWarning, Settings
from crmbet.errors import EventValidationError
from crmbet.events import (
    EVENT_SCHEMA,
    ColumnMapping,
    Event,
    Pseudonymizer,
    bundled_bustabit_path,
    ingest,
    iter_events,
    normalize,
)
from crmbet.events.adapters import BUSTABIT_COLUMNS, bustabit_to_raw, detect_format

GOOD_ROW = {
    "event_id": "e1",
    "player_id": "alice",
    "ts": "2024-05-01T21:00:00Z",
    "event_type": "bet",
    "amount": "10",
    "payout": "25",
    "product": "sports",
}


def _raw(**overrides: object) -> pl.DataFrame:
    return pl.DataFrame([GOOD_ROW | overrides], infer_schema_length=None)


def test_event_model_accepts_valid_bet() -> None:
    event = Event(**GOOD_ROW)
    assert event.won
    assert event.ts.tzinfo is not None


def test_event_model_rejects_payout_on_deposit() -> None:
    with pytest.raises(ValidationError, match="only bets have a payout"):
        Event(**(GOOD_ROW | {"event_type": "deposit"}))


def test_event_model_defaults_bet_product_to_other() -> None:
    event = Event(**(GOOD_ROW | {"product": None}))
    assert event.product == "other"


def test_normalize_converts_good_row() -> None:
    result = normalize(_raw())
    assert result.n_invalid == 0
    assert result.events.schema == pl.Schema(EVENT_SCHEMA)
    row = result.events.row(0, named=True)
    assert row["amount"] == 10.0
    assert row["payout"] == 25.0
    assert row["ts"] == datetime(2024, 5, 1, 21, tzinfo=UTC)


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("amount", "ten", "not a number"),
        ("amount", "-5", "negative"),
        ("amount", None, "missing"),
        ("payout", "lots", "not a number"),
        ("event_type", "wager", "not a known event type"),
        ("ts", "yesterday", "not a timestamp"),
        ("ts", "2999-01-01T00:00:00Z", "more than 1 day in the future"),
        ("player_id", "", "missing"),
        ("event_id", None, "missing"),
        ("product", "darts", "not a known product"),
        ("multiplier", "0.5", "below 1"),
    ],
)
def test_normalize_names_row_field_value_and_fix(
    field: str, value: object, problem: str
) -> None:
    raw = pl.concat(
        [
            _raw(),
            _raw(
                **{field: value, "event_id": "e2"}
                if field != "event_id"
                else {field: value}
            ),
        ],
        how="diagonal_relaxed",
    )
    result = normalize(raw)
    assert result.events.height == 1
    assert result.n_invalid == 1
    [error] = [e for e in result.field_errors() if e.field == field]
    assert error.row == 2
    assert problem in error.problem
    assert error.fix
    with pytest.raises(EventValidationError, match=f"row 2: {field}="):
        result.raise_if_invalid()


@pytest.mark.parametrize(
    "stamps",
    [
        ["2024-05-01T21:00:00Z", "2024-05-01T21:00:01Z"],
        ["2024-05-01T21:00:00.250000Z", "2024-05-01T21:00:01.5Z"],
        ["2024-05-01T21:00:00Z", "2024-05-01T23:00:01+02:00"],
        ["2024-05-01 21:00:00", "2024-05-01 21:00:01"],
        ["1714597200", "1714597201.5"],
        ["2024-05-01T21:00:00Z", "yesterday"],
    ],
)
def test_fixed_timestamp_formats_parse_like_inference(stamps: list[str]) -> None:
    from crmbet.events import validation

    raw = pl.concat(
        [_raw(ts=stamp, event_id=f"e{i}") for i, stamp in enumerate(stamps)],
        how="diagonal_relaxed",
    )
    fast = normalize(raw)
    formats = validation.FAST_TIMESTAMP_FORMATS
    try:
        validation.FAST_TIMESTAMP_FORMATS = ()
        inferred = normalize(raw)
    finally:
        validation.FAST_TIMESTAMP_FORMATS = formats
    assert fast.events.equals(inferred.events)
    assert fast.dead_letters.equals(inferred.dead_letters)


def test_dead_letter_keeps_whole_record() -> None:
    result = normalize(_raw(amount="-1"), source="unit")
    record = orjson.loads(result.dead_letters["record"][0])
    assert record["amount"] == "-1"
    assert record["player_id"] == "alice"
    assert result.dead_letters["source"][0] == "unit"


def test_mapping_renames_columns_and_translates_types() -> None:
    raw = pl.DataFrame(
        {
            "txn": ["t1", "t2"],
            "customer": ["a", "b"],
            "when": ["2024-01-01T00:00:00Z"] * 2,
            "kind": ["DEP", "WAGER"],
            "value": ["100", "5"],
        }
    )
    mapping = ColumnMapping(
        columns={
            "event_id": "txn",
            "player_id": "customer",
            "ts": "when",
            "event_type": "kind",
            "amount": "value",
        },
        constants={"product": "casino"},
        event_type_values={"DEP": "deposit", "WAGER": "bet"},
    )
    result = normalize(raw, mapping)
    assert result.n_invalid == 0
    assert result.events["event_type"].to_list() == ["deposit", "bet"]
    assert result.events["product"].to_list() == [None, "casino"]


def test_mapping_reports_missing_required_column() -> None:
    raw = pl.DataFrame({"event_id": ["1"], "player_id": ["a"], "ts": ["2024-01-01"]})
    with pytest.raises(
        EventValidationError, match="event_type=None is missing: the input has no"
    ):
        normalize(raw)


def test_mapping_rejects_unknown_field() -> None:
    with pytest.raises(ValueError, match="unknown event field"):
        ColumnMapping(columns={"stake": "Bet"})


def test_csv_adapter_sends_bad_rows_to_dead_letters(
    tmp_path: Path, pseudonymizer
) -> None:
    path = tmp_path / "tx.csv"
    pl.concat(
        [_raw(), _raw(event_id="e2", amount="abc"), _raw(event_id="e3")],
        how="diagonal_relaxed",
    ).write_csv(path)
    result = ingest(
        path, pseudonymizer=pseudonymizer, dead_letter_path=tmp_path / "dead.jsonl"
    )
    assert result.events.height == 2
    assert result.dead_letters["row"].to_list() == [2]
    written = [
        orjson.loads(line)
        for line in (tmp_path / "dead.jsonl").read_bytes().splitlines()
    ]
    assert "amount='abc' is not a number" in written[0]["errors"][0]
    # Dead letters hold raw player ids: only the owner may read them.
    assert (tmp_path / "dead.jsonl").stat().st_mode & 0o777 == 0o600


def test_ingest_extra_lines_up_with_events(tmp_path: Path, pseudonymizer) -> None:
    path = tmp_path / "tx.csv"
    pl.concat(
        [
            _raw(archetype="whale"),
            _raw(event_id="e2", amount="abc", archetype="casual"),
            _raw(event_id="e3", player_id="bob", archetype="casual"),
        ],
        how="diagonal_relaxed",
    ).write_csv(path)
    result = ingest(
        path, pseudonymizer=pseudonymizer, batch_size=2, keep_columns=("archetype",)
    )
    assert result.extra is not None
    assert result.extra["event_id"].to_list() == result.events["event_id"].to_list()
    assert result.extra["archetype"].to_list() == ["whale", "casual"]
    assert result.events["player_id"].to_list() == [
        pseudonymizer.pseudonymize("alice"),
        pseudonymizer.pseudonymize("bob"),
    ]


def test_normalize_cleans_labels_case_and_spaces() -> None:
    raw = pl.concat(
        [
            _raw(event_type=" BET", product="Sports "),
            _raw(event_id="e2", product="casino"),
            _raw(event_id="e3", event_type="Refund"),
        ]
    )
    result = normalize(raw)
    assert result.events["event_type"].to_list() == ["bet", "bet"]
    assert result.events["product"].to_list() == ["sports", "casino"]
    assert (
        "event_type='Refund' is not a known event type"
        in (result.dead_letters["errors"][0][0])
    )


def test_normalize_formats_every_failed_check() -> None:
    result = normalize(_raw(amount="-3", product="darts", multiplier="0.5"))
    [errors] = result.dead_letters["errors"].to_list()
    assert [message.split(" is ")[0] for message in errors] == [
        "amount='-3'",
        "product='darts'",
        "multiplier='0.5'",
    ]
    assert result.events.height == 0


def test_csv_adapter_strict_mode_raises(tmp_path: Path, pseudonymizer) -> None:
    path = tmp_path / "tx.csv"
    _raw(amount="-3").write_csv(path)
    with pytest.raises(EventValidationError, match="amount=.*-3.* is negative"):
        ingest(path, pseudonymizer=pseudonymizer, strict=True)


def test_overflowing_amount_is_a_dead_letter(tmp_path: Path, pseudonymizer) -> None:
    path = tmp_path / "tx.csv"
    _raw(amount="1e308").write_csv(path)
    with pytest.raises(EventValidationError, match="amount='1e308' is above 1e\\+12"):
        ingest(path, pseudonymizer=pseudonymizer, strict=True)


def test_parquet_adapter_reports_bad_types(tmp_path: Path, pseudonymizer) -> None:
    path = tmp_path / "tx.parquet"
    pl.DataFrame(
        {
            "event_id": ["1", "2"],
            "player_id": ["a", "b"],
            "ts": [datetime(2024, 1, 1, tzinfo=UTC), datetime(2024, 1, 2, tzinfo=UTC)],
            "event_type": ["deposit", "refund"],
            "amount": [10.0, 5.0],
        }
    ).write_parquet(path)
    result = ingest(path, pseudonymizer=pseudonymizer)
    assert result.events.height == 1
    assert (
        "event_type='refund' is not a known event type"
        in result.dead_letters["errors"][0][0]
    )


def test_jsonl_adapter_keeps_going_after_bad_json(
    tmp_path: Path, pseudonymizer
) -> None:
    path = tmp_path / "tx.jsonl"
    lines = [
        orjson.dumps(GOOD_ROW),
        b"{not json",
        orjson.dumps(GOOD_ROW | {"event_id": "e9"}),
        orjson.dumps(GOOD_ROW | {"event_id": "e10", "amount": -1}),
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = ingest(path, pseudonymizer=pseudonymizer)
    assert result.events["event_id"].to_list() == ["e1", "e9"]
    rows = sorted(result.dead_letters["row"].to_list())
    assert rows == [2, 4]
    messages = " ".join(m for ms in result.dead_letters["errors"].to_list() for m in ms)
    assert "not a JSON object" in messages
    assert "amount='-1' is negative" in messages


def test_jsonl_adapter_uses_mapping(tmp_path: Path, pseudonymizer) -> None:
    path = tmp_path / "tx.ndjson"
    record = {
        "id": "x1",
        "user": "bob",
        "time": "2024-03-03T03:00:00Z",
        "type": "bet",
        "stake": 2.5,
        "returned": 0,
    }
    path.write_bytes(orjson.dumps(record) + b"\n")
    mapping = ColumnMapping(
        columns={
            "event_id": "id",
            "player_id": "user",
            "ts": "time",
            "event_type": "type",
            "amount": "stake",
            "payout": "returned",
        }
    )
    result = ingest(path, pseudonymizer=pseudonymizer, mapping=mapping)
    assert result.events["amount"].to_list() == [2.5]
    assert result.events["player_id"][0] == pseudonymizer.pseudonymize("bob")


def test_bustabit_adapter_reads_all_bets(bustabit_events: pl.DataFrame) -> None:
    events = bustabit_events
    assert events.height == 50_000
    assert events["player_id"].n_unique() == 4_147
    lost = events.filter(pl.col("multiplier").is_null())
    assert lost.height == 21_266
    assert (lost["payout"] == 0).all()


def test_bustabit_payout_follows_profit_formula() -> None:
    raw = pl.read_csv(bundled_bustabit_path(), infer_schema=False, null_values=["NA"])
    won = raw.filter(pl.col("CashedOut").is_not_null())
    events = normalize(bustabit_to_raw(won)).events
    profit = won["Profit"].cast(pl.Float64)
    derived = events["payout"] - events["amount"]
    # The export rounds Profit, CashedOut and Bonus to two decimals, so the
    # formula is exact within half a unit of each rounding, scaled by the stake.
    tolerance = 0.005 + events["amount"] * (0.005 + 0.00005)
    assert ((derived - profit).abs() <= tolerance).all()
    assert ((derived - profit).abs() <= 0.01).mean() > 0.9


def test_bustabit_adapter_reports_bad_row(tmp_path: Path, pseudonymizer) -> None:
    path = tmp_path / "bets.csv"
    with gzip.open(bundled_bustabit_path(), "rt") as handle:
        lines = [next(handle) for _ in range(4)]
    fields = lines[2].split(",")
    fields[3] = "lots"
    lines[2] = ",".join(fields)
    path.write_text("".join(lines))
    assert detect_format(path) == "bustabit"
    result = ingest(path, pseudonymizer=pseudonymizer)
    assert result.events.height == 2
    assert result.dead_letters["row"].to_list() == [2]
    assert "amount='lots' is not a number" in result.dead_letters["errors"][0][0]


def test_detect_format_rejects_unknown_suffix(tmp_path: Path) -> None:
    path = tmp_path / "tx.xlsx"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="--format"):
        detect_format(path)


def test_mapping_on_bustabit_format_is_refused(pseudonymizer) -> None:  # noqa: ANN001
    mapping = ColumnMapping(columns={"player_id": "Username"})
    with pytest.raises(ValueError, match="bustabit format.*--format csv"):
        ingest(bundled_bustabit_path(), pseudonymizer=pseudonymizer, mapping=mapping)


def test_csv_read_as_parquet_names_the_file(tmp_path: Path, pseudonymizer) -> None:  # noqa: ANN001
    path = tmp_path / "tx.csv"
    path.write_text("event_id,player_id,ts\n1,p1,2024-05-01T21:00:00Z\n")
    with pytest.raises(ValueError, match=r"tx\.csv is not a Parquet file"):
        ingest(path, pseudonymizer=pseudonymizer, source_format="parquet")


def test_bustabit_header_is_recognised() -> None:
    with gzip.open(bundled_bustabit_path(), "rt") as handle:
        assert tuple(handle.readline().strip().split(",")) == BUSTABIT_COLUMNS


def test_iter_events_yields_models(bustabit_events: pl.DataFrame) -> None:
    events = list(iter_events(bustabit_events.head(3)))
    assert [type(e) for e in events] == [Event] * 3


def test_pseudonym_is_hmac_sha256() -> None:
    expected = hmac.new(b"k", b"alice", hashlib.sha256).hexdigest()[:20]
    assert Pseudonymizer(b"k").pseudonymize("alice") == "p_" + expected
    assert Pseudonymizer(b"k2").pseudonymize("alice") != "p_" + expected


def test_pseudonymize_column_maps_every_row() -> None:
    frame = pl.DataFrame({"player_id": ["a", "b", "a"], "n": [1, 2, 3]})
    out = Pseudonymizer(b"k").pseudonymize_column(frame)
    assert out["n"].to_list() == [1, 2, 3]
    assert out["player_id"][0] == out["player_id"][2] != out["player_id"][1]
    assert "a" not in out["player_id"].to_list()


def test_development_key_warns(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, pseudonym_key=None)
    with pytest.warns(InsecureKeyWarning, match="CRMBET_PSEUDONYM_KEY"):
        settings.pseudonym_key_bytes()


def test_short_key_warns_outside_production(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, pseudonym_key="short")
    with pytest.warns(InsecureKeyWarning, match="has only 5 bytes"):
        assert settings.pseudonym_key_bytes() == b"short"


def test_production_profile_requires_key(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, pseudonym_key=None, profile="production")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ValueError, match="CRMBET_PSEUDONYM_KEY is missing"):
            settings.pseudonym_key_bytes()


def test_production_profile_rejects_a_short_key(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, pseudonym_key="abc", profile="production")
    with pytest.raises(ValueError, match="has 3 bytes .* at least 32"):
        settings.pseudonym_key_bytes()
    long_key = Settings(home=tmp_path, pseudonym_key="k" * 32, profile="production")
    assert long_key.pseudonym_key_bytes() == b"k" * 32


def test_key_is_not_in_repr(tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, pseudonym_key="super-secret-value")
    assert "super-secret-value" not in repr(settings)
    assert "super-secret-value" not in repr(Pseudonymizer(b"super-secret-value"))


@pytest.mark.parametrize(
    "text",
    [
        "1768039200",
        "2026-01-10 10:00:00",
        "2026-01-10T12:00:00+02:00",
        "2026-01-10T10:00:00Z",
    ],
)
def test_timestamp_formats_in_text(text: str) -> None:
    result = normalize(pl.concat([_raw(ts=text), _raw(event_id="e2", ts=text)]))
    assert result.n_invalid == 0
    assert result.events["ts"][0] == datetime(2026, 1, 10, 10, tzinfo=UTC)


def test_one_column_may_mix_timestamp_forms() -> None:
    forms = [
        "2026-01-10T10:00:00Z",
        "2026-01-10 10:00:00",
        "2026-01-10T12:00:00.000+02:00",
        "2026-01-10 10:00:00.000000",
        "1768039200",
        "2026-01-10t11:00:00+0100",
    ]
    raw = pl.concat([_raw(event_id=f"e{i}", ts=ts) for i, ts in enumerate(forms)])
    result = normalize(pl.concat([raw, _raw(event_id="bad", ts="10/01/2026")]))
    assert result.events["ts"].to_list() == [datetime(2026, 1, 10, 10, tzinfo=UTC)] * 6
    assert result.n_invalid == 1
    assert result.dead_letters["errors"][0][0].startswith("ts='10/01/2026' is not")


def test_mapping_to_missing_column_is_an_error() -> None:
    with pytest.raises(
        EventValidationError, match="player_id='customr' is mapped to a column"
    ):
        normalize(_raw(), ColumnMapping(columns={"player_id": "customr"}))


def test_csv_ragged_rows_become_dead_letters(tmp_path: Path, pseudonymizer) -> None:
    path = tmp_path / "tx.csv"
    _raw().write_csv(path)
    header, good = path.read_text().splitlines()
    width = len(header.split(","))
    rows = [
        good.replace(",", ",", 1),
        good + ",extra",
        ",".join(good.split(",")[:3]),
        good.replace(str(GOOD_ROW["event_id"]), "e-last", 1),
    ]
    path.write_text("\n".join([header, *rows]) + "\n")
    result = ingest(path, pseudonymizer=pseudonymizer)
    assert result.events.height == 2
    assert sorted(result.dead_letters["row"].to_list()) == [2, 3]
    messages = [m for ms in result.dead_letters["errors"].to_list() for m in ms]
    assert f"row 2 has {width + 1} fields but the header has {width}" in messages[0]
    assert "row 3 has 3 fields" in messages[1]


def test_missing_column_names_the_column_and_the_separator(tmp_path: Path) -> None:
    raw = pl.DataFrame({"event_id;player_id;ts": ["1;a;2024-01-01T00:00:00Z"]})
    with pytest.raises(EventValidationError) as caught:
        normalize(raw)
    message = str(caught.value)
    assert "event_type=None is missing: the input has no column 'event_type'" in message
    assert "separated by ';'" in message


def test_normalize_without_free_text_keeps_dead_letter_records() -> None:
    raw = pl.concat(
        [_raw(game=" slots "), _raw(event_id="e2", amount="abc", game="poker")],
        how="diagonal_relaxed",
    )
    full = normalize(raw)
    lean = normalize(raw, free_text=False)
    assert full.events["game"].to_list() == ["slots"]
    assert lean.events["game"].to_list() == [None]
    assert lean.events.schema == full.events.schema
    assert lean.dead_letters.equals(full.dead_letters)
    assert '"game":"poker"' in lean.dead_letters["record"][0]


def test_lean_parquet_read_keeps_whole_dead_letter(
    tmp_path: Path, pseudonymizer
) -> None:
    path = tmp_path / "tx.parquet"
    pl.DataFrame(
        {
            "event_id": ["1", "2", "3"],
            "player_id": ["a", "b", "a"],
            "ts": [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3)],
            "event_type": ["deposit", "refund", "deposit"],
            "amount": [10.0, 5.0, 7.0],
            "game": ["slots", "poker", "dice"],
            "channel": ["web", "app", "web"],
        }
    ).write_parquet(path)
    full = ingest(path, pseudonymizer=pseudonymizer, batch_size=2)
    lean = ingest(path, pseudonymizer=pseudonymizer, batch_size=2, free_text=False)
    assert lean.dead_letters.equals(full.dead_letters)
    assert '"game":"poker"' in lean.dead_letters["record"][0]
    assert lean.events["event_id"].to_list() == ["1", "3"]
    assert lean.events["game"].null_count() == 2
    assert lean.events.drop("game", "channel").equals(
        full.events.drop("game", "channel")
    )


def test_detect_format_reads_file_content(
    tmp_path: Path,
) -> None:
    parquet_named_csv = tmp_path / "export.csv"
    _raw().write_parquet(parquet_named_csv)
    assert detect_format(parquet_named_csv) == "parquet"

    csv_named_parquet = tmp_path / "export.parquet"
    csv_named_parquet.write_text("event_id,player_id\ne1,alice\n")
    with pytest.raises(ValueError, match="does not start like a Parquet file"):
        detect_format(csv_named_parquet)

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="contains no .parquet files"):
        detect_format(empty)


def test_timestamps_before_2000_are_dead_letters() -> None:
    # 20261120, a YYYYMMDD date, reads as Unix seconds in August 1970.
    raw = pl.concat([_raw(ts="20261120"), _raw(event_id="e2", ts="1768039200")])
    result = normalize(raw)
    assert result.n_invalid == 1
    assert result.events["event_id"].to_list() == ["e2"]
    assert result.dead_letters["errors"][0][0].startswith(
        "ts='20261120' is before 2000-01-01; check the unit and format"
    )


def test_key_fingerprint_separates_keys() -> None:
    pseudonymizer = Pseudonymizer(b"k" * 32)
    fingerprint = pseudonymizer.fingerprint
    assert fingerprint == Pseudonymizer(b"k" * 32).fingerprint
    assert fingerprint != Pseudonymizer(b"j" * 32).fingerprint
    assert fingerprint.startswith("k_")
    assert len(fingerprint) == 14
    assert fingerprint[2:] not in pseudonymizer.pseudonymize("")
