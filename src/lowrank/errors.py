"""The project's own error types.

Every user mistake (missing dataset, corrupt file, impossible rank, bad config)
raises a subclass of :class:`LowRankError` whose message names the offending
thing and the fix. The CLI turns these into a one-line message and exit code 2;
library code never prints or exits.
"""

from __future__ import annotations

__all__ = [
    "LowRankError",
    "DatasetNotFoundError",
    "CorruptFileError",
    "RankError",
    "ConfigError",
    "TrainingDivergedError",
    "CheckpointError",
    "RunLockedError",
    "StoreError",
    "ExportError",
    "ReplicaMismatchError",
]


class LowRankError(Exception):
    """Base class of every error this library raises on purpose."""


class DatasetNotFoundError(LowRankError):
    """A named dataset was not found; the message lists every place searched."""


class CorruptFileError(LowRankError):
    """A data or checkpoint file is malformed; the message names file and offset."""


class RankError(LowRankError):
    """A requested rank is impossible for a layer; the message names layer and shape."""


class ConfigError(LowRankError):
    """A configuration value is invalid; the message names the field and value."""


class TrainingDivergedError(LowRankError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class CheckpointError(LowRankError):
    """A checkpoint cannot be read or does not match the run it is loaded into."""


class RunLockedError(LowRankError):
    """Another live process holds the run's lock (it is training the run)."""


class StoreError(LowRankError):
    """The results database cannot be read or written (damaged, foreign, locked, read-only)."""


class ExportError(LowRankError):
    """An exported model does not compute what the PyTorch model does (or cannot be exported)."""


class ReplicaMismatchError(LowRankError):
    """The model replicas of a data-parallel run differ (they must be identical after every step)."""
