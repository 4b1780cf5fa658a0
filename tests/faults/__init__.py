"""Issue 12's fault matrix: one test per row of its table, each failing on the wave-1 behaviour.

Marker ``faults`` (``pytest -m faults``; ``make test`` runs it with everything else). Rows with a test here:

1. poison message (``quantity`` 3e9, a value a sink refuses) — ``test_poison_message.py``
2. 1.5 MB message, DLQ send blocked — ``test_oversized_dead_letter.py``
3. broker loss (topic re-created, empty log, new partitions) — ``test_broker_loss.py``
5. two ``fstore ingest`` of one file at once — ``test_concurrent_writers.py``
   and (Build 5) ``fstore ingest`` and the stream's raw sink on the same events at once —
   ``test_ingest_and_stream_writers.py``

Rows whose test already existed when this matrix was written (not duplicated here):

4. Redis killed and restarted empty: 503 until ``fstore repair`` —
   ``tests/integration/test_batch.py::test_redis_loss_is_503_until_fstore_repair_restores_exact_values``
   (and ``tests/integration/test_online_api.py::test_redis_outage_gives_503_fast_and_recovers``)
6. NaN / Infinity in POST bodies: 422 naming the field —
   ``tests/integration/test_online_api.py::test_non_finite_numbers_are_422_naming_the_field``
7. personal data in dead letters and ``session_id`` —
   ``tests/unit/core/test_events.py::test_pii_never_survives_validation_and_is_masked_in_dead_letters`` and
   ``::test_free_text_session_id_is_stored_as_a_hash``
8. auth of ``/docs``, ``/redoc``, ``/openapi.json`` — ``tests/integration/test_online_api.py::test_api_key``;
   no version banner — ``tests/integration/test_api_schemathesis.py::test_no_version_banner``; the worker's
   metrics on the configured host — ``test_poison_message.py`` (``listening_hosts``)
9. time formats (epoch seconds read as ms) — ``tests/unit/core/test_events.py::test_time_formats``
10. batch killed during the Redis load —
    ``tests/integration/test_batch.py::test_next_run_removes_the_keys_of_a_run_killed_while_loading``

Related unit tests of the worker's failure paths: ``tests/unit/jobs/stream/test_layer_faults.py``.

Issue 12's acceptance drills: ``kill -9`` of the worker (three times in a 200,000-message run), the batch
driver (during Spark, a Delta commit, the Redis load) and the API at seeded random points —
``test_kill9.py``; 100,000 fuzzed bad messages through Kafka against an oracle written from
docs/design.md §2 — ``test_fuzz.py``; the 10-minute soak — ``bench/soak.py`` (docs/benchmarks.md).
"""
