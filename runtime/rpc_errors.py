"""The one mapping from exceptions to gRPC statuses, for every servicer of servegraph (router and worker).

A servicer method wrapped with `@reports_errors` may raise anything: a `ServingError` ends the call
with its own status and message; anything else is INTERNAL, "Type: message", logged with its
traceback. A request id set with `request_id.set(...)` while serving the call is named in the message.
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import grpc

from .errors import ServingError, describe, status_of

logger = logging.getLogger("servegraph.rpc")

request_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("servegraph_request_id", default=None)
"""The id of the request being served (each gRPC call runs in a task of its own, with its own context)."""

Method = TypeVar("Method", bound=Callable[..., Any])


def report(error: BaseException) -> tuple[grpc.StatusCode, str]:
    """The status and message a failed call ends with; errors that are not the caller's are logged
    with their traceback. For failures reported in-band too (V2 streams)."""
    current = request_id.get()
    if isinstance(error, ServingError):
        logger.info("request %s failed: %s", current or "-", error)
        message = str(error)
    else:
        logger.error("request %s failed unexpectedly", current or "-", exc_info=error)
        message = describe(error)
    if current is not None:
        message = f"{message} [request {current}]"
    return grpc.StatusCode[status_of(error)], message


async def abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """End the call with the error's status."""
    await context.abort(*report(error))


def reports_errors(method: Method) -> Method:
    """Wrap a servicer method (unary, or a server-streaming async generator) with `abort`."""
    if inspect.isasyncgenfunction(method):

        @functools.wraps(method)
        async def streaming(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
            try:
                async for item in method(self, request, context):
                    yield item
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                await abort(context, error)

        return streaming  # type: ignore[return-value]

    @functools.wraps(method)
    async def unary(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except grpc.aio.AbortError:
            raise
        except Exception as error:
            await abort(context, error)

    return unary  # type: ignore[return-value]
