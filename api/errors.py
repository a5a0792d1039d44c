"""Errors the API's logic raises; the app turns each into an HTTP answer ``{"detail": ...}`` at the edge."""

from __future__ import annotations


class ApiError(Exception):
    """An error with a status code and a message that says what to fix."""

    status_code = 400

    def __init__(self, detail: str):
        super().__init__(detail)
        self.detail = detail


class BadRequest(ApiError):
    status_code = 400


class Unauthorized(ApiError):
    status_code = 401


class Forbidden(ApiError):
    status_code = 403


class NotFound(ApiError):
    status_code = 404


class Conflict(ApiError):
    """A duplicate: answered with ``x-should-retry: false`` so NeMo's SDK does not retry it."""

    status_code = 409


class Unprocessable(ApiError):
    status_code = 422
