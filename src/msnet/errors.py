"""Exceptions msnet raises for problems the user can fix."""


class MsnetInputError(ValueError):
    """A bad input (file, table row, config key) with a message naming it and the fix."""
