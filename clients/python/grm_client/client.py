"""A small synchronous client: `RewardClient(addr).score(query, responses, k=8)`.

Indices are 0-based; scores are integers 1..10; `rewards[i]` is the sum of response i's
scores over the judgements that voted, `mean_scores[i]` their mean.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Optional, Sequence, Union

import grpc

from .grm.v1 import reward_pb2 as pb
from .grm.v1 import reward_pb2_grpc as pb_grpc

Conversation = Union[str, Sequence[dict]]


class ScoreError(Exception):
    """A request the cluster refused or could not answer (code is a grpc.StatusCode name)."""

    def __init__(self, code: str, message: str, request_id: str = ""):
        super().__init__(f"{code}: {message}")
        self.code, self.message, self.request_id = code, message, request_id


@dataclass
class SampleResult:
    index: int
    text: str
    order: list
    scores: Optional[list]  # in the original order of the responses; None when invalid
    invalid: Optional[str]
    meta_score: Optional[float]
    kept: bool


@dataclass
class ScoreResult:
    id: str
    rewards: list
    mean_scores: list
    votes: int
    best: Optional[int]
    tie: bool
    seed: int
    k_meta: int
    correct: Optional[bool]
    samples: list = field(default_factory=list)
    raw: object = None
    # Set (and nothing else) when this request failed; see RewardClient.score_many.
    error: Optional[ScoreError] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, id: str, error: ScoreError) -> "ScoreResult":
        return cls(id=id, rewards=[], mean_scores=[], votes=0, best=None, tie=False, seed=0, k_meta=0,
                   correct=None, error=error)

    @classmethod
    def from_proto(cls, r) -> "ScoreResult":
        samples = []
        for s in r.samples:
            kind = s.WhichOneof("outcome")
            samples.append(SampleResult(
                index=s.index, text=s.text, order=list(s.order),
                scores=list(s.scores.original) if kind == "scores" else None,
                invalid=s.invalid.message if kind == "invalid" else None,
                meta_score=s.meta_score if s.HasField("meta_score") else None,
                kept=s.kept,
            ))
        return cls(
            id=r.id,
            rewards=[x.reward for x in r.rewards],
            mean_scores=[x.mean_score for x in r.rewards],
            votes=r.rewards[0].votes if r.rewards else 0,
            best=r.best if r.HasField("best") else None,
            tie=r.tie,
            seed=r.seed,
            k_meta=r.k_meta,
            correct=r.correct if r.HasField("correct") else None,
            samples=samples,
            raw=r,
        )


def _code_name(code: int) -> str:
    for c in grpc.StatusCode:
        if c.value[0] == code:
            return c.name
    return str(code)


def _conversation(query: Conversation):
    if isinstance(query, str):
        return [pb.Message(role="user", content=query)]
    return [pb.Message(role=m["role"], content=m["content"]) for m in query]


def build_request(query: Conversation, responses: Sequence[str], *, k: int = 1, k_meta: Optional[int] = None,
                  temperature: Optional[float] = None, top_p: Optional[float] = None, max_new_tokens: int = 0,
                  seed: Optional[int] = None, criteria: Sequence[str] = (), label: Optional[int] = None,
                  return_samples: bool = False, id: str = "") -> "pb.ScoreRequest":
    """A ScoreRequest. `label` is the index of the best response (n >= 2)."""
    sampling = pb.Sampling(k=k, max_new_tokens=max_new_tokens)
    if k_meta is not None:
        sampling.k_meta = k_meta
    if temperature is not None:
        sampling.temperature = temperature
    if top_p is not None:
        sampling.top_p = top_p
    if seed is not None:
        sampling.seed = seed
    req = pb.ScoreRequest(id=id, conversation=_conversation(query), responses=list(responses),
                          criteria=list(criteria), sampling=sampling, return_samples=return_samples)
    if label is not None:
        req.label.best = label
    return req


class RewardClient:
    """A connection to a GRM Cluster router (host:port)."""

    def __init__(self, addr: str, timeout: float = 600.0, token: Optional[str] = None,
                 root_certificates: Optional[bytes] = None, private_key: Optional[bytes] = None,
                 certificate_chain: Optional[bytes] = None):
        """`token`: the router's bearer token, if it requires one. `root_certificates` (PEM):
        connect over TLS, trusting this CA; `private_key` and `certificate_chain` (PEM) when
        the router requires client certificates (mutual TLS)."""
        options = [
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20),
        ]
        if root_certificates is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=root_certificates, private_key=private_key,
                                                 certificate_chain=certificate_chain)
            self.channel = grpc.secure_channel(addr, creds, options=options)
        else:
            self.channel = grpc.insecure_channel(addr, options=options)
        self.stub = pb_grpc.RewardServiceStub(self.channel)
        self.timeout = timeout
        self.metadata = [("authorization", f"Bearer {token}")] if token else None

    def score(self, query: Conversation, responses: Sequence[str], **kw) -> ScoreResult:
        """Scores the responses to a query (a string, or a list of {"role", "content"})."""
        try:
            r = self.stub.Score(build_request(query, responses, **kw), timeout=self.timeout, metadata=self.metadata)
        except grpc.RpcError as e:
            raise ScoreError(e.code().name, e.details()) from None
        return ScoreResult.from_proto(r)

    def score_many(self, requests: Iterable[dict], *, window: Optional[int] = 512,
                   timeout: Optional[float] = None) -> Iterator[ScoreResult]:
        """Streams many requests (dicts of `score`'s arguments, each with a unique "id") over one
        ScoreStream; yields a result per request as it finishes, in any order. A request that
        failed yields a result whose `error` is a ScoreError (the others go on); a failure of
        the stream itself raises ScoreError. At most `window` requests are sent ahead of their
        answers (None: no pacing; the router's flow control then paces the stream).
        `timeout`: for the whole stream (default: the client's)."""
        sem = threading.Semaphore(window) if window else None
        stop = threading.Event()

        def gen():
            for r in requests:
                if sem is not None:
                    while not sem.acquire(timeout=0.2):
                        if stop.is_set():
                            return
                if stop.is_set():
                    return
                r = dict(r)
                yield build_request(r.pop("query"), r.pop("responses"), **r)

        call = self.stub.ScoreStream(gen(), timeout=timeout or self.timeout, metadata=self.metadata)
        try:
            for r in call:
                if sem is not None:
                    sem.release()
                if r.HasField("error"):
                    yield ScoreResult.failed(r.id, ScoreError(_code_name(r.error.code), r.error.message, r.id))
                else:
                    yield ScoreResult.from_proto(r)
        except grpc.RpcError as e:
            raise ScoreError(e.code().name, e.details()) from None
        finally:
            stop.set()
            call.cancel()

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
