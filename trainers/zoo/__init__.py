"""Losses shipped with lossforge (``--loss zoo:NAME``), one JSON file each, recording how it was made.

A file's ``family`` says which recipe reads it: ``taylor`` (the PU selector/discriminator family,
``train-pu``) or ``preference-taylor`` (``train-dpo``)."""
from __future__ import annotations

import json
from importlib import resources

from trainers.errors import UsageError

ZOO_PREFIX = "zoo:"


def zoo_specs(family: str) -> dict[str, dict]:
    """Name -> contents of every shipped loss file of ``family``."""
    shipped = {}
    for entry in resources.files(__name__).iterdir():
        if entry.name.endswith(".json"):
            spec = json.loads(entry.read_text())
            if spec.get("family") == family:
                shipped[entry.name[: -len(".json")]] = spec
    return dict(sorted(shipped.items()))


def zoo_spec(spec: str, family: str) -> dict:
    """The contents of ``zoo:NAME`` for ``family``; a clear error naming what the zoo has."""
    name, shipped = spec[len(ZOO_PREFIX):], zoo_specs(family)
    if name not in shipped:
        raise UsageError(f"no loss {spec!r} in the zoo for this task; it has {[ZOO_PREFIX + n for n in shipped]}")
    return shipped[name]
