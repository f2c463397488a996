from __future__ import annotations

import pytest
from kubetune_operator.errors import (
    ApiError,
    BadRequest,
    Conflict,
    Forbidden,
    Gone,
    Invalid,
    NamespaceTerminating,
    NotFound,
    Transient,
    api_error,
)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0, Transient),
        (400, BadRequest),
        (403, Forbidden),
        (404, NotFound),
        (409, Conflict),
        (410, Gone),
        (422, Invalid),
        (429, Transient),
        (500, Transient),
        (503, Transient),
        (418, ApiError),
    ],
)
def test_each_status_has_its_class(status: int, expected: type[ApiError]) -> None:
    error = api_error(status=status, reason="R", message="m")
    assert type(error) is expected and error.status == status


def test_a_forbidden_create_in_a_terminating_namespace_is_its_own_class() -> None:
    error = api_error(status=403, reason="Forbidden", message="being terminated", causes=("NamespaceTerminating",))
    assert isinstance(error, NamespaceTerminating) and isinstance(error, Forbidden)
    assert type(api_error(status=403, reason="Forbidden", message="rbac", causes=("FieldValueInvalid",))) is Forbidden
    assert type(api_error(status=404, reason="NotFound", message="", causes=("NamespaceTerminating",))) is NotFound
