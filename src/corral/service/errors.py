"""Service errors. Each carries the HTTP status the API answers with; messages name the sandbox.

    ServiceError
    ├── InvalidRequest       400  a field is out of range or malformed
    ├── Unauthorized         401  missing, unknown or revoked API key
    ├── Forbidden            403  valid key, not allowed (e.g. admin-only)
    ├── NotFound             404  unknown/ended sandbox, missing file or process
    ├── Conflict             409  e.g. the path already exists as another type, the sandbox is paused
    ├── TooLarge             413  upload larger than the sandbox's disk
    ├── TooMany              429  sandbox limit of this server reached
    ├── Unreachable          502  a sandbox port asked for while the sandbox is paused
    ├── Unavailable          503  runtime failure, server not ready
    └── NoSpace              507  the sandbox's disk is full
"""

from __future__ import annotations


class ServiceError(Exception):
    status = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(ServiceError):
    status = 400


class Unauthorized(ServiceError):
    status = 401


class Forbidden(ServiceError):
    status = 403


class NotFound(ServiceError):
    status = 404


class Conflict(ServiceError):
    status = 409


class TooLarge(ServiceError):
    status = 413


class TooMany(ServiceError):
    status = 429


class Unreachable(ServiceError):
    status = 502


class Unavailable(ServiceError):
    status = 503


class NoSpace(ServiceError):
    status = 507
