"""Exceptions that map one-to-one onto HTTP error statuses.

Handlers raise these; :mod:`eventbus.api` turns every one of them into a JSON
``{"error": ...}`` response in a single place.
"""
from __future__ import annotations

from typing import Sequence


class ApiError(Exception):
    """An error the client should see, with its HTTP status."""

    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(ApiError):
    status = 400


class NotFound(ApiError):
    status = 404


class MethodNotAllowed(ApiError):
    status = 405

    def __init__(self, message: str, allowed: Sequence[str]) -> None:
        super().__init__(message)
        self.allowed = sorted(allowed)


class Conflict(ApiError):
    status = 409


class PayloadTooLarge(ApiError):
    status = 413


class Unavailable(ApiError):
    """The database cannot be reached (or did not answer in time)."""

    status = 503
