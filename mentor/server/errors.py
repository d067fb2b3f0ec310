"""Errors the API answers with: OpenAI's shape, {"error": {"message", "type", "param", "code"}}, a 4xx
for every bad request, never a traceback."""

from __future__ import annotations

import re


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def not_found(what: str, name: str, param: str | None = None) -> ApiError:
    return ApiError(404, f"no {what} '{name}'", param=param, code=re.sub(r"[^a-z]+", "_", what) + "_not_found")


def bad(message: str, param: str | None = None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, param=param, code=code)


def disk_full(err: BaseException) -> bool:
    """A full disk (or quota), said by the OS or by SQLite ("database or disk is full")."""
    from mentor.jobs.lifecycle import disk_full as os_disk_full

    return os_disk_full(err) or "database or disk is full" in str(err)


def no_space(what: str) -> ApiError:
    """The server's disk is full: a 507 that says so, so a client knows to retry later."""
    return ApiError(507, f"no space left on device on the server while {what}; free some space and retry",
                    code="no_space_left", type="server_error")
