"""User-facing errors: the CLI prints them as one line and exits with code 2, no traceback."""


class UserError(Exception):
    """A problem the user can fix (bad input, bad flag, missing file). Message says what, where, how."""

    exit_code = 2


class DataError(UserError):
    """A problem in a data file; the message names the file, line (or row) and field."""


class NonFiniteError(UserError):
    """A NaN/inf loss or gradient: names the step and the pairs of the batch; the last checkpoint is kept."""

    exit_code = 3
