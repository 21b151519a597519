"""Bearer tokens on any grpc.aio server: one interceptor, so that no servicer has to remember a check.

Every call must carry ``authorization: Bearer <token>`` metadata, except gRPC health, which load
balancers and orchestrators probe without credentials. Generic handlers (the V2 service) are covered
like any other, since interceptors see every method. Imports only grpc and `servegraph.tls`.
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import grpc

from .tls import CredentialsError, PathLike

logger = logging.getLogger("servegraph.auth")

HEADER = "authorization"
HEALTH = "/grpc.health.v1.Health/"


def read_tokens(path: PathLike) -> list[str]:
    """The tokens in a file, one a line (surrounding whitespace and blank lines ignored)."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) and error.strerror else error
        raise CredentialsError(f"cannot read token file {path}: {reason}") from None
    tokens = [line.strip() for line in text.splitlines() if line.strip()]
    if not tokens:
        raise CredentialsError(f"token file {path} holds no token")
    return tokens


def bearer(token: str) -> tuple[tuple[str, str]]:
    """The metadata a client sends with each call."""
    return ((HEADER, f"Bearer {token}"),)


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses calls without a valid bearer token with UNAUTHENTICATED; methods under `exempt` pass."""

    def __init__(self, tokens: Iterable[str], exempt: Sequence[str] = (HEALTH,)):
        self._tokens = [token.encode() for token in tokens]
        if not self._tokens:
            raise ValueError("TokenAuth needs at least one token")
        self._exempt = tuple(exempt)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        method = handler_call_details.method
        metadata = handler_call_details.invocation_metadata  # type: ignore[attr-defined]
        refusal = None if method.startswith(self._exempt) else self._refusal(metadata)
        handler = await continuation(handler_call_details)
        # unknown methods are refused too: without a token, UNIMPLEMENTED would tell which ones exist
        return handler if refusal is None else _refuse(handler, method, refusal)

    def accepts(self, token: str) -> bool:
        """Compares against every valid token in constant time: no timing tells how much of one matched."""
        given = token.encode()
        matched = False
        for valid in self._tokens:
            matched |= hmac.compare_digest(given, valid)
        return matched

    def _refusal(self, metadata: Iterable[tuple[str, Any]] | None) -> str | None:
        """Why the call is refused, or None."""
        values = [value for key, value in metadata or () if key == HEADER]
        if not values:
            return f"missing bearer token: send '{HEADER}: Bearer <token>' metadata"
        scheme, _, token = str(values[0]).partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return f"malformed '{HEADER}' metadata: expected 'Bearer <token>'"
        return None if self.accepts(token.strip()) else "invalid bearer token"


def _refuse(handler: grpc.RpcMethodHandler | None, method: str, message: str) -> grpc.RpcMethodHandler:
    """A handler of the same kind as `handler` (unary for an unknown method) that ends the call with
    UNAUTHENTICATED."""

    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        logger.info("refused %s from %s: %s", method, context.peer(), message)
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }[(handler.request_streaming, handler.response_streaming) if handler is not None else (False, False)]
    return make(deny)
