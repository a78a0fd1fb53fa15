"""Typed errors that carry the video (or file) they are about and a reason a person can act on.

Every message reads on its own in a failures table: what, which video, why.
"""
from __future__ import annotations


class VidfeatError(Exception):
    """Base of all errors this package raises on purpose (the CLI prints them without a traceback)."""


class CheckpointError(VidfeatError):
    """A checkpoint that cannot be read, is not a checkpoint, or does not fit the model."""


class ConfigError(VidfeatError):
    """A configuration, manifest or output directory that cannot be used as given."""


class DecodeError(VidfeatError):
    """A video that cannot be decoded. `kind` is one of KINDS; `video` names the video (id or uri)."""

    KINDS = ("not_found", "permission_denied", "not_a_video", "unsupported_codec", "no_frames", "corrupt",
             "timeout", "io")

    def __init__(self, video: str, kind: str, reason: str):
        self.video, self.kind, self.reason = video, kind, reason
        super().__init__(f"{video}: {kind}: {reason}")

    def __reduce__(self):
        return (type(self), (self.video, self.kind, self.reason))


class DamagedOutputError(ConfigError):
    """An output directory whose ledger cannot be trusted as it is (a record that cannot be read, a
    commit by a writer that lost its lease): nothing is deleted; the message names the file."""


class LeaseLostError(VidfeatError):
    """This writer no longer holds the output's lease (another writer took it over, or its heartbeat could
    not be published): it stops before it commits anything more."""


class ClusterLostError(Exception):
    """The Ray cluster a run depends on failed under it (its raylet or GCS died, the driver's node was
    lost): nothing is wrong with the input or the output; the same command resumes."""


class ClusterUnreachable(ClusterLostError):
    """The Ray cluster at the address given cannot be reached (nothing listens, or no answer in time):
    found before the output is touched."""


class Terminated(BaseException):
    """SIGTERM arrived (a scheduler's preemption). A BaseException, like KeyboardInterrupt: no
    `except Exception` stops it on its way out, and every `finally` on the way runs."""
