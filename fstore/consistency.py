"""Online/offline consistency check (docs/design.md §5): GET /features vs get_historical_features at as_of.

Samples entities from ``raw_events``, reads each one's features from the running API, then computes the
same features offline with ``event_timestamp`` = the ``as_of`` of each response, and counts mismatches
per feature. With every event up to ``as_of`` ingested (stream raw sink flushed), the count must be 0.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import pandas as pd
import pyarrow.compute as pc

from fstore.core.aggregates import isclose
from fstore.core.features import VIEWS, get_view
from fstore.delta import raw_log
from fstore.offline.local import get_historical_features


@dataclass
class ConsistencyReport:
    """Mismatches per ``view:feature`` over the sampled entities."""

    entities: int = 0
    compared: int = 0
    mismatches: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing differed."""
        return not self.mismatches and self.compared > 0


def sample_entities(raw_uri: str, join_key: str, n: int, seed: int) -> list[str]:
    """Up to ``n`` distinct entity keys seen in ``raw_events`` (reproducible with ``seed``)."""
    keys: list[str] = pc.unique(raw_log.read_table(raw_uri, [join_key]).column(join_key).drop_null()).to_pylist()
    keys.sort()
    random.Random(seed).shuffle(keys)
    return keys[:n]


def check(
    api_url: str,
    raw_uri: str,
    sample: int = 1000,
    seed: int = 0,
    views: Sequence[str] = tuple(VIEWS),
    api_key: str | None = None,
    progress: Callable[[int], object] | None = None,
) -> ConsistencyReport:
    """Compare the API with the offline engine for ``sample`` entities per view.

    Args:
        api_url: base URL of a running ``fstore serve``.
        raw_uri: the ``raw_events`` table the offline engine reads.
        sample: entities per view.
        seed: sampling seed.
        views: feature views to check.
        api_key: sent as ``X-API-Key`` when given.
        progress: called with 1 after each entity read.
    """
    report = ConsistencyReport()
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=api_url, headers=headers, timeout=10.0) as http:
        for name in views:
            view = get_view(name)
            key = view.entity.join_key
            online: list[tuple[str, int, dict[str, Any]]] = []
            for entity in sample_entities(raw_uri, key, sample, seed):
                r = http.get("/features", params={key: entity, "features": view.name})
                r.raise_for_status()
                body = r.json()
                online.append((entity, body["as_of_us"], body["rows"][0]["values"]))
                if progress:
                    progress(1)
            if not online:
                continue
            df = pd.DataFrame(
                {
                    key: [e for e, _, _ in online],
                    "event_timestamp": pd.to_datetime([t * 1000 for _, t, _ in online], utc=True),
                }
            )
            offline = get_historical_features(df, [view.name], raw_uri=raw_uri)
            report.entities += len(online)
            for i, (entity, as_of, values) in enumerate(online):
                for f in view.feature_names:
                    want = offline[f].iloc[i]
                    want = None if pd.isna(want) else want.item() if hasattr(want, "item") else want
                    got = values[f"{view.name}:{f}"]
                    report.compared += 1
                    if not isclose(got, want):
                        report.mismatches[f"{view.name}:{f}"] += 1
                        if len(report.examples) < 10:
                            report.examples.append(
                                {
                                    "view": view.name,
                                    key: entity,
                                    "as_of_us": as_of,
                                    "feature": f,
                                    "online": got,
                                    "offline": want,
                                }
                            )
    return report
