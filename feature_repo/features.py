"""Feast definitions of fstore, generated from the single definition in ``fstore.core.features``.

``feast apply`` scans this module's globals for entities and feature views; they are created from the
core definition here, so adding a feature there is all it takes to register it.
"""

from pathlib import Path

from fstore.feast.defs import feast_objects
from fstore.settings import get_settings

# A relative FSTORE_DATA_DIR is relative to the project root, whatever directory `feast` runs in.
_DATA_DIR = (Path(__file__).resolve().parent.parent / get_settings().data_dir).resolve()

globals().update(feast_objects(str(_DATA_DIR)))
