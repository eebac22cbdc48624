"""Domain errors, each mapped to an HTTP status by the handlers."""


class SpillwayError(Exception):
    status = 500


class NotFound(SpillwayError):
    status = 404


class Invalid(SpillwayError):
    """The request is well-formed but cannot be served (unknown service, missing upload, ...)."""

    status = 422


class BadRequest(SpillwayError):
    """The request cannot be read as sent (e.g. a cursor this API did not give)."""

    status = 400


class Unauthorized(SpillwayError):
    status = 401


class Conflict(SpillwayError):
    status = 409


class NoCapacity(SpillwayError):
    """No GPU in the pool can take the task now; the message goes back to the queue."""


class Forbidden(SpillwayError):
    """Not allowed this: a caller with no identity, or an agent speaking for another GPU."""

    status = 403
