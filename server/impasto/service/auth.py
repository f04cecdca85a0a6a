"""Bearer-token authentication and TLS credentials for the server."""

from __future__ import annotations

import hmac
import logging
from pathlib import Path

import grpc

from ..protocol import ImpastoError, Kind
from .servicer import abort

log = logging.getLogger("impasto.server")

# Load balancers and `grpc_health_probe` ask without a token; the answer reveals only "serving".
_OPEN_METHODS = ("/grpc.health.v1.Health/",)


class TokenInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, token: str):
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation, handler_call_details):
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(_OPEN_METHODS):
            return handler
        given = dict(handler_call_details.invocation_metadata).get("authorization", "")
        # Constant time, so the comparison does not leak how much of a guess was right.
        if hmac.compare_digest(given.encode(), self._expected):
            return handler
        detail = "no token was sent" if not given else "the token sent is not this server's"
        log.info("refused a call to %s: %s", handler_call_details.method, detail)
        return _refusal(handler, ImpastoError(Kind.UNAUTHENTICATED, detail))


def _refusal(handler: grpc.RpcMethodHandler, error: ImpastoError) -> grpc.RpcMethodHandler:
    async def refuse(request, context: grpc.aio.ServicerContext):
        await abort(context, error)

    kinds = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    make = kinds[(handler.request_streaming, handler.response_streaming)]
    return make(
        refuse,
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def read_token(token_file: Path | None, environment_token: str | None) -> str | None:
    if token_file is not None:
        token = token_file.read_text().strip()
        if not token:
            raise ValueError(f"token file {token_file} is empty")
        return token
    return environment_token or None


def server_credentials(cert: Path, key: Path) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials([(key.read_bytes(), cert.read_bytes())])
