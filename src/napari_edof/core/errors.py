"""Errors raised for bad input: each names the problem (and the file when there is one)."""
from __future__ import annotations


class EdofError(ValueError):
    """Any problem with the user's input that napari-edof detected and can explain."""


class StackError(EdofError):
    """The stack cannot be fused as given (shape, dtype, axes, values)."""


class ReadError(EdofError):
    """A file or folder could not be read as a focus stack."""


class MethodError(EdofError):
    """Unknown method or a parameter outside what the method declares."""


class Cancelled(Exception):
    """Raised inside a run when the consumer stopped it between tiles."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread by the CLI's handler: every clean-up that Ctrl-C runs
    (staging, partial and work folders removed, earlier results kept) runs for it too."""


class EdofWarning(UserWarning):
    """Something the user should know about a run that still went ahead: metadata that did not
    match the data and was reconciled, a previous result that was replaced. The CLI prints these
    on stderr; napari shows them as notifications."""
