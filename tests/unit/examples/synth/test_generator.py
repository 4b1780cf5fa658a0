"""The synthetic event generator (examples.synth.generator) and ``fstore generate``."""

from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import orjson
import pytest
from click.testing import CliRunner

from examples.synth.cli import generate as generate_command
from examples.synth.generator import (
    CHANGED,
    DUPLICATE,
    LATE,
    MALFORMED,
    PII,
    GeneratorConfig,
    generate,
    generate_batches,
    planned_total,
)
from examples.synth.malformed import FAMILIES
from fstore.core.events import REASONS, Rejection, reason_family
from fstore.core.timeutil import DAY, HOUR, MINUTE, from_micros, to_micros
from fstore.kafka.messages import iter_batches
from tests.support.legacy.events_example import Event, parse

pytestmark = pytest.mark.unit

END = to_micros(datetime(2026, 1, 1, tzinfo=UTC))
INJECT = {"duplicate_rate": 0.02, "late_rate": 0.02, "malformed_rate": 0.02, "pii_rate": 0.02}


def config(**kw: Any) -> GeneratorConfig:
    return GeneratorConfig(**{"start": END - 7 * DAY, "end": END, **kw})


class Stream(NamedTuple):
    values: list[bytes]
    keys: list[str | None]
    arrival: np.ndarray[Any, np.dtype[np.int64]]
    flags: np.ndarray[Any, np.dtype[np.uint8]]
    reasons: list[str | None]
    parsed: list[Event | Rejection]


def collect(cfg: GeneratorConfig, seed: int = 7) -> Stream:
    batches = list(generate(cfg, seed))
    values = [v for b in batches for v in b.values]
    return Stream(
        values,
        [k for b in batches for k in b.keys],
        np.concatenate([b.arrival for b in batches]) if batches else np.zeros(0, np.int64),
        np.concatenate([b.flags for b in batches]) if batches else np.zeros(0, np.uint8),
        [r for b in batches for r in b.reasons],
        [parse(v, cfg.end) for v in values],
    )


@pytest.fixture(scope="module")
def stream() -> Stream:
    """120k messages over 7 days with every injection, in 4 slices."""
    return collect(config(events=120_000, batch_size=30_000, **INJECT))


def valid_events(s: Stream, distinct: bool = True) -> list[Event]:
    return [
        p for p, f in zip(s.parsed, s.flags, strict=True) if isinstance(p, Event) and not (distinct and f & DUPLICATE)
    ]


def stream_bytes(cfg: GeneratorConfig, seed: int, **kw: Any) -> bytes:
    return b"\n".join(v for _, values in generate_batches(cfg, seed, **kw) for v in values)


# -- determinism and counts ------------------------------------------------------------------------


def test_same_seed_same_bytes_and_different_seed_differs() -> None:
    cfg = config(events=20_000, batch_size=7_000, **INJECT)
    first = stream_bytes(cfg, 3)
    assert stream_bytes(cfg, 3) == first
    assert stream_bytes(cfg, 4) != first
    assert stream_bytes(cfg, 3, dumps=orjson.dumps) == first  # output does not depend on the serialiser


@pytest.mark.parametrize("events", [0, 1, 7, 12_345, 250_001])
def test_exact_event_count(events: int) -> None:
    cfg = config(events=events, batch_size=100_000, **INJECT)
    sizes = [len(values) for _, values in generate_batches(cfg, 1)]
    assert sum(sizes) == events == planned_total(cfg)
    assert all(0 < n <= cfg.batch_size for n in sizes)


def test_session_volume_without_event_count() -> None:
    cfg = config(users=500, end=END - 5 * DAY, sessions_per_user_per_day=2.0)  # 2 days → 2000 sessions
    s = collect(cfg)
    sessions = {p.session_id for p in valid_events(s)}
    assert len(sessions) == 2_000
    assert abs(len(s.values) / planned_total(cfg) - 1) < 0.05


def test_arrival_order_is_global_across_slices(stream: Stream) -> None:
    assert (np.diff(stream.arrival) >= 0).all()
    cfg = config(events=50_000, batch_size=4_000, late_rate=0.3)
    arrival = np.concatenate([b.arrival for b in generate(cfg, 2)])
    assert len(arrival) == 50_000 and (np.diff(arrival) >= 0).all()


# -- the event contract ----------------------------------------------------------------------------


def test_every_valid_message_parses_inside_the_range(stream: Stream) -> None:
    for p, f, r in zip(stream.parsed, stream.flags, stream.reasons, strict=True):
        assert isinstance(p, Event) == (r is None) == (not f & MALFORMED)
    events = valid_events(stream, distinct=False)
    assert all(END - 7 * DAY <= e.event_time < END for e in events)
    assert all(e.session_id is not None for e in events)
    ids = [e.event_id for e in valid_events(stream)]
    assert len(set(ids)) == len(ids)
    keys = [k for k, p in zip(stream.keys, stream.parsed, strict=True) if isinstance(p, Event)]
    assert keys == [e.user_id for e in events]
    assert all(b"\n" not in v for v in stream.values)


def test_purchases_carry_price_and_quantity(stream: Stream) -> None:
    purchases = [e for e in valid_events(stream) if e.event_type == "purchase"]
    assert len(purchases) > 300
    assert all(e.price is not None and e.price >= 0 and round(e.price, 2) == e.price for e in purchases)
    assert all(e.quantity >= 1 for e in purchases)
    assert len({e.quantity for e in purchases}) > 1
    page_views = [e for e in valid_events(stream) if e.event_type == "page_view"]
    with_product = sum(e.product_id is not None for e in page_views) / len(page_views)
    assert 0.5 < with_product < 0.7


def test_event_time_formats(stream: Stream) -> None:
    valid = [v for v, f in zip(stream.values, stream.flags, strict=True) if not f & (MALFORMED | DUPLICATE)]
    epoch = [orjson.loads(v)["event_time"] for v in valid]
    share = sum(isinstance(t, int) for t in epoch) / len(epoch)
    assert 0.09 < share < 0.11
    iso = next(t for t in epoch if isinstance(t, str))
    assert iso.endswith("Z") and len(iso) == len("2025-12-31T10:21:13.118Z")


def test_malformed_messages_are_rejected_with_their_reason(stream: Stream) -> None:
    bad = [(v, r) for v, r in zip(stream.values, stream.reasons, strict=True) if r is not None]
    assert len(bad) == 2_400
    for value, reason in bad:
        assert parse(value, END) == Rejection(reason), value[:200]
        assert parse(value, END, loads=orjson.loads) == Rejection(reason), value[:200]
    families = Counter(reason_family(r) for _, r in bad)
    assert set(families) == set(REASONS)
    # cycling evenly through the generator's families; numbers out of their type's range are invalid_type too
    made = Counter(FAMILIES[j % len(FAMILIES)].replace("out_of_range", "invalid_type:<f>") for j in range(len(bad)))
    assert families == made, families
    reasons = {r for _, r in bad}
    assert {"missing_field:price", "invalid_type:event_time", "invalid_id:product_id"} <= reasons
    assert sum(len(v) > 64 * 1024 for v, _ in bad) == families["oversized"]
    assert {"invalid_type:quantity", "invalid_type:price", "invalid_type:event_time"} <= reasons


def test_future_timestamps_are_in_the_future_for_years() -> None:
    s = collect(config(events=800, malformed_rate=0.5))
    future = [v for v, r in zip(s.values, s.reasons, strict=True) if r == "future_timestamp"]
    assert future
    later = END + 9 * 365 * DAY
    assert all(parse(v, later) == Rejection("future_timestamp") for v in future)


def test_pii_events_are_valid(stream: Stream) -> None:
    pii = [(v, p) for v, p, f in zip(stream.values, stream.parsed, stream.flags, strict=True) if f & PII]
    assert 0.015 < len(pii) / len(stream.values) < 0.025
    for value, parsed in pii:
        obj = orjson.loads(value)
        assert {"email", "phone", "ip"} <= obj.keys()
        assert isinstance(parsed, Event)
    assert not any(b'"email"' in v for v, f in zip(stream.values, stream.flags, strict=True) if not f & PII)


def test_duplicates_share_event_id_with_an_earlier_message(stream: Stream) -> None:
    seen: dict[str, list[bytes]] = {}
    identical = changed = 0
    for value, p, f in zip(stream.values, stream.parsed, stream.flags, strict=True):
        if not isinstance(p, Event):
            continue
        if f & DUPLICATE:
            original = seen[p.event_id][0]  # KeyError if the original has not arrived yet
            if f & CHANGED:
                assert value != original
                changed += 1
            else:
                assert value == original
                identical += 1
        else:
            assert p.event_id not in seen
        seen.setdefault(p.event_id, []).append(value)
    assert identical + changed == 2_400 and abs(identical - changed) <= 1


def test_late_events_arrive_hours_after_their_event_time(stream: Stream) -> None:
    delay: dict[bool, list[int]] = {True: [], False: []}
    for p, a, f in zip(stream.parsed, stream.arrival, stream.flags, strict=True):
        if isinstance(p, Event) and not f & DUPLICATE:
            delay[bool(f & LATE)].append(int(a) - p.event_time)
    late, prompt = np.array(delay[True]), np.array(delay[False])
    assert 0.015 < len(late) / len(prompt) < 0.025
    assert late.min() >= HOUR and late.max() <= 48 * HOUR
    assert np.median(prompt) < 1_000_000 and np.percentile(prompt, 99.9) < MINUTE


# -- realistic traffic -----------------------------------------------------------------------------


@pytest.mark.parametrize(("click", "cart", "buy"), [(0.1, 0.3, 0.5), (0.25, 0.5, 0.2)])
def test_funnel_rates(click: float, cart: float, buy: float) -> None:
    s = collect(config(events=80_000, click_rate=click, cart_rate=cart, purchase_rate=buy))
    n = Counter(e.event_type for e in valid_events(s))
    assert n["click"] / n["impression"] == pytest.approx(click, rel=0.06)
    assert n["add_to_cart"] / n["click"] == pytest.approx(cart, rel=0.12)
    assert n["purchase"] / n["add_to_cart"] == pytest.approx(buy, rel=0.15)
    assert n["page_view"] > 0


def test_zipf_product_popularity(stream: Stream) -> None:
    counts = Counter(e.product_id for e in valid_events(stream) if e.event_type == "impression")
    freq = np.sort(np.array(list(counts.values()), dtype=np.float64))[::-1][:50]
    slope = np.polyfit(np.log(np.arange(1, 51)), np.log(freq), 1)[0]
    assert slope == pytest.approx(-1.1, abs=0.15)
    flat = collect(config(events=40_000, zipf_exponent=0.0))
    flat_counts = Counter(e.product_id for e in valid_events(flat) if e.event_type == "impression")
    assert max(flat_counts.values()) < 3 * (sum(flat_counts.values()) / 1000)


def test_daily_traffic_curve(stream: Stream) -> None:
    hours = Counter(from_micros(e.event_time).hour for e in valid_events(stream))
    assert hours[19] > 4 * hours[7]  # peak at 19:00 UTC, night trough twelve hours later
    assert hours[19] == max(hours.values()) or hours[20] == max(hours.values())


def test_ids_use_the_contract_charset(stream: Stream) -> None:
    e = valid_events(stream)[0]
    assert e.user_id.startswith("u") and len(e.user_id) == 7
    assert all(x.product_id is None or len(x.product_id) == 6 for x in valid_events(stream)[:1000])


def test_invalid_config_names_the_field() -> None:
    with pytest.raises(ValueError, match="click_rate"):
        config(click_rate=1.5)
    with pytest.raises(ValueError, match="end"):
        GeneratorConfig(start=END, end=END)


# -- the command -----------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("ext", ["parquet", "jsonl"])
def test_cli_output_is_reproducible(tmp_path: Path, ext: str) -> None:
    rates = ["--malformed-rate", "0.01", "--duplicate-rate", "0.01", "--late-rate", "0.01", "--pii-rate", "0.01"]
    args = ["--events", "5000", "--days", "2", "--end", "2026-01-01", "--seed", "11", *rates]
    runner = CliRunner()
    for name in ("a", "b"):
        res = runner.invoke(generate_command, [*args, "--out", str(tmp_path / f"{name}.{ext}")])
        assert res.exit_code == 0, res.output
        assert "wrote 5,000 messages" in res.output
    assert sha256(tmp_path / f"a.{ext}") == sha256(tmp_path / f"b.{ext}")
    values = [v for batch in iter_batches(tmp_path / f"a.{ext}") for v in batch]
    cfg = GeneratorConfig(
        start=END - 2 * DAY,
        end=END,
        events=5000,
        malformed_rate=0.01,
        duplicate_rate=0.01,
        late_rate=0.01,
        pii_rate=0.01,
    )
    assert values == [v for _, vs in generate_batches(cfg, 11) for v in vs]


def test_cli_defaults_match_the_config() -> None:
    defaults = {f.name: f.default for f in dataclasses.fields(GeneratorConfig)}
    params = {p.name: p.default for p in generate_command.params if p.name in defaults}
    assert len(params) >= 12
    for name, default in params.items():
        assert default == defaults[name], name


def test_cli_rejects_a_bad_end() -> None:
    res = CliRunner().invoke(generate_command, ["--out", "x.jsonl", "--end", "yesterday"])
    assert res.exit_code == 2 and "--end" in res.output
