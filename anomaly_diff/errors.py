"""The errors of bad input: the command line shows a :class:`UserError` as one line; any other error is a bug.

Every message names the culprit (a file, directory, key or value) and says what would be right. A subclass exists
where a caller tells it apart, and subclasses the built-in error that callers of the Python API may catch
(``except FileNotFoundError`` still catches a :class:`MissingFileError`).
"""


class UserError(Exception):
    """Bad input (data, weights, files, arguments), not a bug: shown as its message, without a traceback."""


class ConfigError(UserError, ValueError):
    """A configured class or command refused its arguments, or a checkpoint does not fit the configuration."""


class UnknownConfigError(ConfigError):
    """A ``--config`` value is neither a file nor the name of a packaged config; the message lists the names."""


class DatasetError(UserError, ValueError):
    """The data on disk, or an argument describing it, cannot be used as given.

    Samples are never skipped: a bad file stops the run with this error instead of being dropped.
    """


class InvalidSampleError(UserError, ValueError):
    """A test or validation sample cannot be scored (non-finite map or score, a mask or label out of range).

    Attributes:
        index: The sample's position in its batch (set by the metrics, so that the caller can name its file).
    """

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


class NotFittedError(UserError, RuntimeError):
    """The category classifier was asked to predict before its class means were fitted (an old checkpoint)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file the input names (checkpoint, weights, autoencoder) does not exist or cannot be fetched."""


class UnknownCategoryError(UserError, KeyError):
    """A category the model was not trained on."""

    __str__ = Exception.__str__  # KeyError's own would quote the message


class NonFiniteLossError(UserError, FloatingPointError):
    """A loss term turned NaN or infinite."""


class SweepError(UserError, RuntimeError):
    """W&B cannot be used for a sweep, or the sweep file is unusable (``make sweep`` prints it as one line)."""


class OutputPathError(UserError, OSError):
    """An output path cannot be written: it exists and may not be replaced, a parent is a file, or no permission."""

