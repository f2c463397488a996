"""Typed failures of Kubernetes API calls, one class per way a caller reacts.

``api_error`` turns an HTTP status into the class, so callers write ``except NotFound`` instead of
comparing numbers. Every class keeps ``status`` (the HTTP status, 0 when the server was not reached).
"""

from __future__ import annotations


class ApiError(Exception):
    """An API call failed; ``status`` is the HTTP status (0 when the server was not reached), ``causes`` the
    reasons of the API server's ``details.causes`` (e.g. FieldValueRequired for each refused field)."""

    def __init__(self, *, status: int, reason: str, message: str, causes: tuple[str, ...] = ()) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message
        self.causes = causes


class BadRequest(ApiError):
    """400: the API server could not decode the object (a field of the wrong shape). Permanent."""


class NotFound(ApiError):
    """404: the object (or its namespace) does not exist."""


class Conflict(ApiError):
    """409: the name is taken, or a resourceVersion / uid precondition no longer holds. Re-read and retry."""


class Gone(ApiError):
    """410: a watch or list resumed from a resourceVersion the API server no longer keeps. Re-list."""


class Invalid(ApiError):
    """422: the API server's validation (OpenAPI schema, CEL rules) rejected the object. Permanent."""


class Forbidden(ApiError):
    """403: RBAC, an admission plugin or a ResourceQuota refused the request."""


class NamespaceTerminating(Forbidden):
    """403 with cause NamespaceTerminating: nothing new may be created in a namespace being deleted; the
    FineTuneJob goes with it, so there is nothing left to do."""


class Transient(ApiError):
    """429, 5xx, or no answer at all: the server is busy or unreachable. Retry with backoff."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: BadRequest,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    410: Gone,
    422: Invalid,
}


def api_error(*, status: int, reason: str, message: str, causes: tuple[str, ...] = ()) -> ApiError:
    """The typed error for an HTTP status and the ``details.causes[].reason`` of the API server's Status."""
    if status == 403 and "NamespaceTerminating" in causes:
        return NamespaceTerminating(status=status, reason=reason, message=message, causes=causes)
    if status in _BY_STATUS:
        return _BY_STATUS[status](status=status, reason=reason, message=message, causes=causes)
    if status == 0 or status == 429 or status >= 500:
        return Transient(status=status, reason=reason, message=message, causes=causes)
    return ApiError(status=status, reason=reason, message=message, causes=causes)


class ChildProblem(Exception):
    """A child cannot be created for a reason retrying will not fix; ``problem`` names the field."""

    def __init__(self, problem: str) -> None:
        super().__init__(problem)
        self.problem = problem


class ChildConflictError(ChildProblem):
    """A child's deterministic name is taken by an object the FineTuneJob does not own."""

    def __init__(self, message: str) -> None:
        super().__init__(f"metadata.name: {message}")


class ChildRejectedError(ChildProblem):
    """The API server refused a child built from the spec (400/422): a spec the CRD's schema let through."""

    def __init__(self, message: str) -> None:
        super().__init__(f"spec: {message}")
