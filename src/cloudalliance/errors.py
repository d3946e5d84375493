"""The course's errors: one base class, so the command line catches them all. Each stage subclasses it with a
message that says what to do; ``exit_code`` is what the command line exits with (2: bad input or an environment
problem, 1: the work itself failed)."""


class CloudallianceError(RuntimeError):
    exit_code = 2
