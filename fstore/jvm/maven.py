"""Resolve Maven coordinates into a cached directory of jars, once.

A :class:`JarSet` is a named list of coordinates (``group:artifact:version``). :func:`fetch` writes a
throw-away pom naming them and runs ``mvn dependency:copy-dependencies`` into a temporary directory, then
renames it to ``<cache>/<name>/`` with a ``MANIFEST`` (the jar file names) written last: a directory with
a manifest whose jars all exist is complete, so a second fetch runs no Maven at all and downloads nothing.
A failed resolution leaves ``<cache>/<name>.failed`` with Maven's error, so callers can say which
coordinates failed without trying again at run time.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import escape

MANIFEST = "MANIFEST"


class JarError(RuntimeError):
    """Jars could not be resolved, or are not cached; the message says which coordinates and what to do."""


@dataclass(frozen=True)
class JarSet:
    """Coordinates resolved together into ``<cache>/<name>/``.

    Args:
        name: directory name in the cache (carry the versions, e.g. ``kafka-4.4.0``).
        coordinates: ``group:artifact:version`` strings.
        transitive: also copy every runtime dependency (False: exactly the named jars, e.g. plugins that
            run inside a host — Spark — that already has their dependencies).
    """

    name: str
    coordinates: tuple[str, ...]
    transitive: bool = True

    def directory(self, cache: Path) -> Path:
        """Where the jars of this set live in ``cache``."""
        return cache / self.name

    def failure_file(self, cache: Path) -> Path:
        """``<cache>/<name>.failed``: Maven's error of the last failed resolution."""
        return cache / f"{self.name}.failed"


def cached(jars: JarSet, cache: Path) -> list[Path] | None:
    """The jars of a complete cached set, or ``None`` when the set is not (completely) in the cache."""
    folder = jars.directory(cache)
    try:
        names = (folder / MANIFEST).read_text().split()
    except OSError:
        return None
    paths = [folder / n for n in names]
    return paths if paths and all(p.is_file() for p in paths) else None


def last_failure(jars: JarSet, cache: Path) -> str | None:
    """Maven's error from the last failed :func:`fetch` of ``jars``, if the set is not cached."""
    try:
        return jars.failure_file(cache).read_text()
    except OSError:
        return None


def pom(jars: JarSet) -> str:
    """A pom whose dependencies are the set's coordinates."""
    deps = []
    for coord in jars.coordinates:
        group, artifact, version = coord.split(":")
        deps.append(
            f"    <dependency><groupId>{escape(group)}</groupId><artifactId>{escape(artifact)}</artifactId>"
            f"<version>{escape(version)}</version></dependency>"
        )
    body = "\n".join(deps)
    return (
        '<project xmlns="http://maven.apache.org/POM/4.0.0">\n  <modelVersion>4.0.0</modelVersion>\n'
        "  <groupId>fstore.local</groupId><artifactId>jars</artifactId><version>0</version><packaging>pom</packaging>\n"
        f"  <dependencies>\n{body}\n  </dependencies>\n</project>\n"
    )


def fetch(jars: JarSet, cache: Path, timeout: float = 900.0) -> tuple[list[Path], bool]:
    """The set's jars, resolving them with Maven unless they are cached.

    Returns:
        ``(jars, fetched)``: the jar paths, and whether Maven ran (False: everything was cached).

    Raises:
        JarError: Maven is missing or failed (its last output lines, with the coordinates); the error is
            also kept in :meth:`JarSet.failure_file`.
    """
    have = cached(jars, cache)
    if have is not None:
        return have, False
    mvn = shutil.which("mvn")
    if mvn is None:
        raise _failed(jars, cache, "mvn (Apache Maven) is not on PATH; run `make setup` (it installs maven)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{jars.name}-", dir=cache) as tmp:
        work = Path(tmp)
        (work / "pom.xml").write_text(pom(jars))
        out = work / "jars"
        argv = [mvn, "-q", "-B", "-f", str(work / "pom.xml"), "dependency:copy-dependencies",
                f"-DoutputDirectory={out}", "-DincludeScope=runtime",
                f"-DexcludeTransitive={str(not jars.transitive).lower()}"]  # fmt: skip
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise _failed(jars, cache, f"mvn did not finish within {timeout:.0f} s") from None
        found = sorted(p.name for p in out.glob("*.jar")) if out.is_dir() else []
        if res.returncode != 0 or not found:
            tail = "\n".join((res.stdout + res.stderr).strip().splitlines()[-15:])
            raise _failed(jars, cache, f"mvn exited {res.returncode}:\n{tail}")
        (out / MANIFEST).write_text("\n".join(found) + "\n")
        final = jars.directory(cache)
        if final.exists():  # an incomplete earlier attempt
            shutil.rmtree(final)
        out.rename(final)
    jars.failure_file(cache).unlink(missing_ok=True)
    have = cached(jars, cache)
    assert have is not None
    return have, True


def _failed(jars: JarSet, cache: Path, why: str) -> JarError:
    msg = f"cannot resolve {', '.join(jars.coordinates)} from Maven Central: {why}"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        jars.failure_file(cache).write_text(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} {msg}\n")
    except OSError:
        pass
    return JarError(msg)
