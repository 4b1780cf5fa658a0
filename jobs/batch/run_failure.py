"""One line that says why a batch run failed, for the last line of its output (the stack trace comes first).

A Spark failure reaches Python as a ``Py4JJavaError`` (or PySpark's conversion of one) whose text is a Java
stack trace pages long; the line an operator needs is the root cause's own (``java.io.IOException: No space
left on device`` inside "Job aborted due to stage failure").
"""

from __future__ import annotations

from datetime import date

#: Longest summary printed (a message that quotes a whole plan or file list is cut).
MAX_CHARS = 400


def summary(exc: BaseException) -> str:
    """``exc``'s type and the first line of its message; for a Java exception, its root cause's own line."""
    # py4j's Py4JJavaError holds the Java throwable as ``java_exception``; PySpark's CapturedException (what
    # PySpark makes of most of them) as ``_origin``.
    java = getattr(exc, "java_exception", None) or getattr(exc, "_origin", None)
    text = ""
    if java is not None:
        try:
            for _ in range(20):  # "Job aborted due to stage failure" wraps the task's own error: name that one
                cause = java.getCause()
                if cause is None or cause.equals(java):
                    break
                java = cause
            text = str(java.toString())
        except Exception:  # the JVM is gone: fall back to the Python text
            text = ""
    if not text:
        first = next((line.strip() for line in str(exc).splitlines() if line.strip()), "")
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    text = " ".join(text.split())
    return text if len(text) <= MAX_CHARS else text[: MAX_CHARS - 1] + "…"


def failure_line(run_date: date, exc: BaseException) -> str:
    """The closing line of a failed run (exit 1: a retry is safe, the run is idempotent)."""
    return f"Error: the batch run for {run_date} failed (exit 1; a re-run is safe): {summary(exc)}"
