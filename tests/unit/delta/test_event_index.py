"""The event_id hash of the writers' index (pure numpy/Arrow; the Delta parts are integration-tested)."""

from __future__ import annotations

import random
import string
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from fstore.delta.event_index import NEW, SAME_DAY, EventIndex, id_hashes

pytestmark = pytest.mark.unit


def test_hash_is_a_function_of_the_string_alone() -> None:
    rng = random.Random(3)
    alphabet = string.ascii_letters + string.digits + "_.:-"
    ids = [""] + ["".join(rng.choices(alphabet, k=rng.randint(1, 128))) for _ in range(3000)]
    ids += ["a", "a" * 7, "a" * 8, "a" * 9, "a" * 16, "a" * 17, "ab", "ba", "a\x00"]
    h = id_hashes(ids)
    assert h.dtype == np.uint64 and len(h) == len(ids)
    # the same per id whatever the batch around it (lengths, order, slicing, chunks, dictionary encoding)
    assert all(id_hashes([x])[0] == hx for x, hx in zip(ids[::97], h[::97], strict=True))
    arr = pa.array(ids)
    assert (id_hashes(arr.slice(5, 100)) == h[5:105]).all()
    assert (id_hashes(pa.chunked_array([arr.slice(0, 10), arr.slice(10)])) == h).all()
    assert (id_hashes(arr.dictionary_encode()) == h).all()
    assert (id_hashes(arr.cast(pa.large_string())) == h).all()
    assert len(id_hashes([])) == 0
    # distinct ids, distinct hashes (these ones: a collision would only cost a read, see the index)
    assert len(set(h.tolist())) == len(set(ids))


def test_every_byte_matters() -> None:
    base = "evt-0123456789abcdef-0123456789"
    variants = [base[:i] + chr(ord(base[i]) ^ 1) + base[i + 1 :] for i in range(len(base))]
    assert len(set(id_hashes([base, *variants]).tolist())) == len(base) + 1


@pytest.mark.parametrize("new_share", [1.0, 0.5])
def test_an_index_fed_the_callers_hashes_knows_what_it_would_have_hashed(tmp_path: Path, new_share: float) -> None:
    """The stream's raw sink hashes a flush's ids once for ``classify`` and ``record``: an index given those
    hashes places every id on the same day as one that hashed them itself (all copies new, or only some)."""
    rng = random.Random(5)
    ids = [f"e{i}-{rng.randrange(10**9)}" for i in range(2_000)]
    days = np.array([20_000 + i % 3 for i in range(len(ids))], np.int32)
    verdicts = np.where(np.arange(len(ids)) < new_share * len(ids), NEW, SAME_DAY).astype(np.int8)
    own, given = EventIndex(str(tmp_path / "a")), EventIndex(str(tmp_path / "b"))
    h = id_hashes(ids)
    assert (own.classify(ids, days) == given.classify(ids, days, h)).all()
    own.record(ids, days, verdicts)
    given.record(ids, days, verdicts, h)
    probe = id_hashes([*ids, "never-seen"])
    assert (own._lookup(probe) == given._lookup(probe)).all()
    new = verdicts == NEW
    assert (given._lookup(h)[new] == days[new]).all()
