"""The library's one exception type. Salt front ends turn it into ``CommandExecutionError``."""


class EnvoyFormulaError(Exception):
    """Something the operator must fix or know about; the message says what and where.

    ``info``: structured detail a front end may return alongside the message (for example which
    registrations succeeded before another one failed)."""

    def __init__(self, message, info=None):
        super().__init__(message)
        self.info = info
