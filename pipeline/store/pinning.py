"""The output's fingerprint pin, `run.json`: what changes features (model, checkpoint, sampling,
preprocessing, decode mode), pinned by the first commit so that no later run mixes other features in.
"""
from __future__ import annotations

import json

from pipeline.errors import ConfigError, DamagedOutputError
from pipeline.store.claims import overtaken_is_lost
from pipeline.store.publish import publish_bytes


class Pinned:
    """The pin of a `Ledger` (which provides `fs`, `out`, `url` and `path`)."""

    def check_fingerprint(self, fingerprint: str, config: dict | None = None) -> None:
        """Refuse `fingerprint` when the output is pinned to another one (run.json)."""
        pinned = self._pinned()
        if pinned is not None and pinned["fingerprint"] != fingerprint:
            raise ConfigError(
                f"{self.out} holds features made with another configuration (fingerprint "
                f"{pinned['fingerprint']}, this run {fingerprint}): what changes features — model, "
                f"checkpoint, sampling, preprocessing, decode mode — must stay the same; "
                f"write to a new output directory instead. Pinned: {json.dumps(pinned.get('features'))}")

    def pin(self, fingerprint: str, config: dict) -> None:
        """Pin `fingerprint` in run.json (exclusively: the first commit does it), or check it."""
        data = json.dumps({"fingerprint": fingerprint, "features": config}, indent=2).encode()
        try:
            with overtaken_is_lost(self):
                publish_bytes(data, self.url("run.json"), exclusive=True)
        except FileExistsError:
            self.check_fingerprint(fingerprint)

    def _pinned(self) -> dict | None:
        try:
            return json.loads(self.fs.cat_file(self.path("run.json")))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise DamagedOutputError(f"{self.url('run.json')} cannot be read ({exc}): restore it, or delete "
                                     f"it if this output holds no committed video") from None
