"""User-facing errors.

Every failure a user can cause is raised as a :class:`DcssaError` carrying the file it concerns and
what to do about it, so the CLIs can print one clear line and exit non-zero instead of a traceback.
"""

from __future__ import annotations

from pathlib import Path


class DcssaError(Exception):
    """A problem the user can fix; ``str()`` names the file (if any) and the fix (if known)."""

    exit_code = 2

    def __init__(self, message: str, *, path: str | Path | None = None, hint: str | None = None):
        self.message = message
        self.path = None if path is None else str(path)
        self.hint = hint
        super().__init__(self.__str__())

    def __str__(self) -> str:
        text = f"{self.path}: {self.message}" if self.path else self.message
        if self.hint:
            text += f"\n  fix: {self.hint}"
        return text


class StrokeError(DcssaError):
    """Malformed strokes input (bad nesting, NaN, empty stroke ...)."""


class BundleError(DcssaError):
    """A bundle folder that is missing, corrupted or inconsistent."""


class GalleryError(DcssaError):
    """A gallery that is missing, corrupted or built by another photo encoder."""


class BackendError(DcssaError):
    """A backend or precision that is not available on this machine."""


class MissingExtra(DcssaError):
    """An optional package a command needs is not installed; the hint names the extra to install."""

    def __init__(self, message: str, *, hint: str | None = None, package: str | None = None) -> None:
        self.package = package
        super().__init__(message, hint=hint)


class SessionError(DcssaError):
    """Misuse of a stroke session (cache bound exceeded, undo on empty session ...)."""
