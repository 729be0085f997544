"""Exceptions msnet raises for problems the user can fix."""


class MsnetInputError(ValueError):
    """A bad input (file, table row, config key) with a message naming it and the fix."""


class MsnetInputErrors(MsnetInputError):
    """Several bad inputs found in one pass, reported together as one list.

    Each problem is one line naming the file (and row or key), what is wrong and the fix, so a
    dataset of thousands of subjects is repaired in one go rather than one run per error.

    Parameters
    ----------
    problems : iterable of str or MsnetInputError
        The problems; an :class:`MsnetInputErrors` among them contributes its own lines, and a
        message spanning several lines is joined into one.
    what : str, optional
        What was checked, for the first line (e.g. ``"studies.tsv and its studies"``).

    Attributes
    ----------
    problems : list of str
        One line per problem, in the order found.
    """

    def __init__(self, problems, what: str = ""):
        self.problems = []
        for problem in problems:
            if isinstance(problem, MsnetInputErrors):
                self.problems += problem.problems
            else:
                self.problems.append(" ".join(str(problem).split()))
        if len(self.problems) == 1:
            message = self.problems[0]
        else:
            where = f" in {what}" if what else ""
            message = (f"{len(self.problems)} input problems{where}, one line each "
                       "(fix them all, then run again):\n  - " + "\n  - ".join(self.problems))
        super().__init__(message)
