"""Database outages: what waits through a restart, what does not, and how an outage is logged."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import exc as sa_exc

from motionserve.database import log_failure, retry_while_unreachable, unreachable

DOWN = sa_exc.OperationalError("SELECT 1", {}, Exception("connection refused"))
REFUSED = sa_exc.ProgrammingError("SELECT nope", {}, Exception("syntax error"))


def test_unreachable_means_the_connection_not_the_statement() -> None:
    assert unreachable(DOWN)
    assert unreachable(sa_exc.TimeoutError("pool exhausted"))
    assert not unreachable(REFUSED)
    assert not unreachable(ValueError())


def test_a_call_is_retried_until_the_database_answers() -> None:
    answers: list[object] = [DOWN, DOWN, "stored"]

    def call() -> object:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retry_while_unreachable(call, for_s=30, what="test") == "stored"
    assert answers == []


def test_other_errors_and_long_outages_are_raised() -> None:
    def refused() -> None:
        raise REFUSED

    def down() -> None:
        raise DOWN

    with pytest.raises(sa_exc.ProgrammingError):
        retry_while_unreachable(refused, for_s=30, what="test")
    with pytest.raises(sa_exc.OperationalError):
        retry_while_unreachable(down, for_s=0.1, what="test")


def test_an_outage_is_logged_in_one_line_and_other_errors_in_full(caplog: pytest.LogCaptureFixture) -> None:
    logger = logging.getLogger("test.outage")
    for error in (DOWN, REFUSED):
        try:
            raise error
        except sa_exc.SQLAlchemyError:
            log_failure(logger, "chore %s failed", "x")
    down, refused = caplog.records
    assert down.levelname == "WARNING" and down.exc_info is None
    assert down.getMessage() == "chore x failed: database unreachable ((builtins.Exception) connection refused)"
    assert refused.levelname == "ERROR" and refused.exc_info is not None
