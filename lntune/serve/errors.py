"""ServeError: a request the server refuses, with the HTTP status and the OpenAI-style error type it gets."""

from __future__ import annotations

from lntune.errors import LntuneError

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 409: "conflict_error", 413: "request_too_large", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "server_busy"}


class ServeError(LntuneError):
    """What was wrong with a request and what to do; `status` is the HTTP code, `param` the field at fault."""

    def __init__(self, message: str, status: int = 400, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.param = param
        self.code = code

    def body(self) -> dict:
        """The OpenAI error body: the official clients read `error.message`, `type`, `param`, `code`."""
        return {"error": {"message": str(self), "type": ERROR_TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}
