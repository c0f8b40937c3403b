"""Errors a user can act on.

Anything raised as a `TestbedError` is a problem with the input or the machine, not a bug:
the CLI prints its message as one line and exits with `exit_code`, never with a traceback.
"""

from __future__ import annotations


class TestbedError(Exception):
    """A one-line, actionable problem; the CLI exits with `exit_code`."""

    __test__ = False  # not a pytest test class, despite the name
    exit_code = 2


class InvalidFile(TestbedError):
    """A data file (topology, scenario) that does not say what it must."""


class MissingBinaries(TestbedError):
    """No usable PostgreSQL server binaries were found."""


class PortInUse(TestbedError):
    """A fixed port asked for by the topology is taken by someone else."""


class ServerFailed(TestbedError):
    """A server did not start, stop or answer as asked."""

    exit_code = 1


class Refused(TestbedError):
    """An operator procedure whose precondition does not hold (`force` overrides it)."""

    exit_code = 1


class CannotRunHere(TestbedError):
    """A scenario this backend cannot run (the swarm backend and a site added mid-run)."""
