"""The one exception type of the data layer."""


class DatasetError(ValueError):
    """The data on disk, or an argument describing it, cannot be used as given.

    Every message names the offending file, directory, CSV row, key or value and says what would be
    right, so that the command line can print it as is. Samples are never skipped: a bad file stops
    the run with this error instead of being dropped.
    """
