"""An asyncio client over `grpc.aio`, with the same API as `RewardClient`:

    async with AsyncRewardClient("localhost:50051") as client:
        r = await client.score("What is 17 * 3?", ["51", "41"], k=8)
        async for r in client.score_many(requests):
            ...

A `grpc.aio` channel belongs to the event loop it was created in: create the client inside the
loop that uses it (e.g. lazily, in the first coroutine that needs it).
"""
from __future__ import annotations

import asyncio
from typing import AsyncIterable, AsyncIterator, Iterable, Optional, Sequence, Union

import grpc
import grpc.aio

from .client import Conversation, ScoreError, ScoreResult, build_request, request_of
from .grm.v1 import reward_pb2_grpc as pb_grpc

_OPTIONS = [
    ("grpc.max_receive_message_length", 64 << 20),
    ("grpc.max_send_message_length", 64 << 20),
]


class AsyncRewardClient:
    """A connection to a GRM Cluster router (host:port), for asyncio code."""

    def __init__(self, addr: str, timeout: float = 600.0, token: Optional[str] = None,
                 root_certificates: Optional[bytes] = None, private_key: Optional[bytes] = None,
                 certificate_chain: Optional[bytes] = None):
        """As `RewardClient`: `token` is the router's bearer token, if it requires one;
        `root_certificates` (PEM) connects over TLS trusting this CA; `private_key` and
        `certificate_chain` (PEM) for mutual TLS."""
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=private_key,
                                                 certificate_chain=certificate_chain)
            self.channel = grpc.aio.secure_channel(addr, creds, options=_OPTIONS)
        else:
            self.channel = grpc.aio.insecure_channel(addr, options=_OPTIONS)
        self.stub = pb_grpc.RewardServiceStub(self.channel)
        self.timeout = timeout
        self.metadata = (("authorization", f"Bearer {token}"),) if token else None

    async def score(self, query: Conversation, responses: Sequence[str], *, timeout: Optional[float] = None,
                    **kw) -> ScoreResult:
        """Scores the responses to a query (a string, or a list of {"role", "content"}); the
        arguments are `RewardClient.score`'s (`group=` included). `timeout`: seconds for this
        call (default: the client's)."""
        req = build_request(query, responses, **kw)
        try:
            r = await self.stub.Score(req, timeout=timeout or self.timeout, metadata=self.metadata)
        except grpc.aio.AioRpcError as e:
            raise ScoreError(e.code().name, e.details()) from None
        return ScoreResult.from_proto(r)

    async def score_many(self, requests: Union[Iterable[dict], AsyncIterable[dict]], *,
                         window: Optional[int] = 512, timeout: Optional[float] = None) -> AsyncIterator[ScoreResult]:
        """Streams many requests (dicts of `score`'s arguments, each with a unique "id"; an
        iterable or an async iterable) over one ScoreStream, yielding a result per request as
        it finishes, in any order. A request that failed yields a result whose `error` is a
        ScoreError (the others go on); a failure of the stream itself raises ScoreError. At
        most `window` requests are sent ahead of their answers (None: no pacing).
        `timeout`: for the whole stream (default: the client's)."""
        sem = asyncio.Semaphore(window) if window else None
        bad: list = []

        async def items():
            if hasattr(requests, "__aiter__"):
                async for r in requests:
                    yield r
            else:
                for r in requests:
                    yield r

        async def gen():
            async for r in items():
                if sem is not None:
                    await sem.acquire()
                try:
                    req = request_of(r)
                except Exception as e:  # noqa: BLE001 - re-raised in the caller's task
                    bad.append(e)
                    return
                yield req

        call = self.stub.ScoreStream(gen(), timeout=timeout or self.timeout, metadata=self.metadata)
        try:
            async for r in call:
                if sem is not None:
                    sem.release()
                yield ScoreResult.from_stream(r)
        except grpc.aio.AioRpcError as e:
            raise ScoreError(e.code().name, e.details()) from None
        finally:
            call.cancel()
        if bad:
            raise bad[0]

    async def close(self):
        await self.channel.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.close()
