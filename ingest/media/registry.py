"""Connector lookup: config ``connector: <name>`` → class in ``ingest/media/<name>.py``.

Adding a media = one module here that defines a ``Connector`` subclass with ``name``, plus its
name in ``ingest.config.KNOWN_CONNECTORS`` and a config block. Modules import lazily so a
broken connector cannot stop the others from loading.
"""

from __future__ import annotations

import importlib

from ingest.config import KNOWN_CONNECTORS
from ingest.errors import ConfigError
from ingest.media.base import Connector


def connector_class(name: str) -> type[Connector]:
    if name not in KNOWN_CONNECTORS:
        raise ConfigError(f"unknown connector {name!r} (known: {', '.join(KNOWN_CONNECTORS)})")
    module = importlib.import_module(f"ingest.media.{name}")
    for obj in vars(module).values():
        if (isinstance(obj, type) and issubclass(obj, Connector) and obj is not Connector
                and getattr(obj, "name", None) == name):
            return obj
    raise ConfigError(f"module ingest.media.{name} defines no Connector with name {name!r}")
