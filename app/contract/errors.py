"""Domain errors: each kind carries the status and code it answers with, so every front end maps them alike.

The HTTP layer turns them into ``{"error": code, "detail": text}`` with ``status``;
``productrec score`` records ``code`` and the text per file; neither needs a table of its own.
"""

from __future__ import annotations


class DomainError(Exception):
    """An outcome of the pipeline other than a prediction. Subclasses set ``status`` and ``code``."""

    status: int = 500
    code: str = "internal_error"
    retry: bool = False  # True: the client may retry later (answers carry Retry-After)

    def record(self) -> dict[str, str]:
        """The error as a front end reports it: code and detail."""
        return {"error": self.code, "detail": str(self)}


def error_record(exc: BaseException) -> dict[str, str]:
    """``{"error", "detail"}`` for any exception: a domain error's own code, else ``internal_error``."""
    if isinstance(exc, DomainError):
        return exc.record()
    return {"error": DomainError.code, "detail": f"{type(exc).__name__}: {exc}"}
