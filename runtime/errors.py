"""Errors that servegraph raises, each with the status a transport should report.

The engine knows nothing of gRPC, so every runtime error carries a status *name* (`code`) that the
servers translate into their own status codes (``grpc.StatusCode[code]``).
"""

from __future__ import annotations


class GraphError(ValueError):
    """A graph that cannot be built: raised while building or validating, never while serving."""


class ModelRunnerError(GraphError, RuntimeError):
    """Models that cannot serve as declared, refused when the graph starts (MLRun's ModelRunnerError):
    `models_errors` maps each such model to why. Also a RuntimeError, the kind MLRun's callers catch."""

    def __init__(self, models_errors: dict[str, str]):
        self.models_errors = dict(models_errors)
        super().__init__("; ".join(self.models_errors.values()))


class ServingError(Exception):
    """Base of the errors a request can end with; `code` names the status to report."""

    code = "INTERNAL"


class InvalidArgument(ServingError):
    """The request itself is wrong (a malformed body, a missing field, a bad tensor)."""

    code = "INVALID_ARGUMENT"


class NotFound(ServingError):
    """The request names something the graph does not have (a route, a model)."""

    code = "NOT_FOUND"


class Unavailable(ServingError):
    """A part the request needs is down for now (a worker that died); retrying later may succeed."""

    code = "UNAVAILABLE"


class ResourceExhausted(ServingError):
    """Too many calls are already waiting for a model (its ``max_queued``); retrying later may succeed."""

    code = "RESOURCE_EXHAUSTED"


class DeadlineExceeded(ServingError):
    """A call ran past its time limit."""

    code = "DEADLINE_EXCEEDED"


class StepError(ServingError):
    """A user step raised; keeps the step's name and the original exception as ``__cause__``."""

    def __init__(self, step: str, error: BaseException, what: str | None = None):
        self.step = step
        self.error = error
        super().__init__(f"{what or f'step {step!r}'} failed: {describe(error)}")

    @property
    def code(self) -> str:  # type: ignore[override]
        return status_of(self.error)


def status_of(error: BaseException) -> str:
    """The status name for any exception: a ServingError's own, a timeout's, else INTERNAL."""
    if isinstance(error, ServingError):
        return error.code
    if isinstance(error, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return "INTERNAL"


HTTP_STATUS = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "RESOURCE_EXHAUSTED": 429,
    "CANCELLED": 499,
    "INTERNAL": 500,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}
"""MLRun's HTTP status numbers for our status names, for code written against MLRun's mock server."""


def http_status(error: BaseException) -> int:
    """The HTTP-style status MLRun reports for a failed request.

    An exception that carries its own number (MLRun's errors have ``error_status_code``) keeps it; any
    other exception a step raised is 400, as MLRun reports it; servegraph's own errors map by status name.
    """
    cause = error.error if isinstance(error, StepError) else error
    own = getattr(cause, "error_status_code", None) or getattr(cause, "status_code", None)
    if isinstance(own, int):
        return own
    if isinstance(error, StepError) and not isinstance(cause, ServingError):
        return 400
    return HTTP_STATUS.get(status_of(error), 500)


def describe(error: BaseException) -> str:
    """MLRun's "Type: message" form, used where an error is reported inside a result."""
    if isinstance(error, RemoteError):
        return str(error)
    return f"{type(error).__name__}: {error}"


class ModelError(StepError):
    """A model of a ModelRunnerStep failed: names the endpoint and the step."""

    def __init__(self, step: str, endpoint: str, error: BaseException):
        self.endpoint = endpoint
        super().__init__(step, error, f"model '{endpoint}' in step '{step}'")


class RemoteError(ServingError):
    """An error a worker process reported: its text is already "Type: message"."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


class MaxIterationsError(ServingError, RuntimeError):
    """A cycle ran a step more often than its ``max_iterations`` allows (MLRun raises RuntimeError)."""

    def __init__(self, step: str, event_id: str):
        self.step = step
        super().__init__(f"Max iterations exceeded in step '{step}' for event {event_id}")


_BY_CODE: dict[str, type[ServingError]] = {
    cls.code: cls for cls in (InvalidArgument, NotFound, Unavailable, DeadlineExceeded, ResourceExhausted)
}


def error_for_status(code: str, message: str) -> ServingError:
    """The ServingError a client raises for a failed call's status name and message."""
    error = _BY_CODE.get(code, ServingError)(message)
    if error.code != code:
        error.code = code
    return error
