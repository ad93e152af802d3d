"""A small synchronous client: `RewardClient(addr).score(query, responses, k=8)`.

Indices are 0-based; scores are integers 1..10; `rewards[i]` is the sum of response i's
scores over the judgements that voted, `mean_scores[i]` their mean.

`group=` makes a request a member of a group (a GRPO group sent one sample, or one rank's
share, per call): the router holds the members until the group is complete and judges them
together; each member gets the rewards of its own responses and `ScoreResult.group`.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Iterable, Iterator, Mapping, Optional, Sequence, Union

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
class Group:
    """Membership of a group (proto `Group`): `key` names it (1..256 bytes; a GRPO group's uid,
    ...), `size` is how many responses the whole group will have over all its members
    (2..64), `wait_ms` how long the router waits for the last members after the first
    arrives (0: the router's default, 5000); past it the responses present are judged."""
    key: str
    size: int
    wait_ms: int = 0


GroupLike = Union[Group, Mapping]


@dataclass
class GroupResult:
    """How a member's group was judged (proto `GroupResult`)."""
    size: int  # distinct responses judged together
    responses: int  # responses that arrived over all members (duplicates included)
    members: int  # calls that were members
    partial: bool  # the wait ended before `Group.size` responses arrived
    subgroups: int  # sub-groups the distinct responses were judged in (1 unless > --max-responses)
    wait_ms: float  # how long this member waited for the rest of its group
    mean_scores: list  # mean score (1..10) of every distinct response, in the group's order
    positions: list  # where this member's responses are in `mean_scores`

    @classmethod
    def from_proto(cls, g) -> "GroupResult":
        return cls(size=g.size, responses=g.responses, members=g.members, partial=g.partial,
                   subgroups=g.subgroups, wait_ms=g.wait_ms, mean_scores=list(g.mean_scores),
                   positions=list(g.positions))


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
    # Judgements counted for each response (the same for all in plain voting).
    response_votes: list = field(default_factory=list)
    valid_samples: int = 0
    invalid_samples: int = 0
    # How the request's group was judged, when it was a member of one (`group=`); else None.
    group: Optional[GroupResult] = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def failed(cls, id: str, error: ScoreError) -> "ScoreResult":
        return cls(id=id, rewards=[], mean_scores=[], votes=0, best=None, tie=False, seed=0, k_meta=0,
                   correct=None, error=error)

    @classmethod
    def from_stream(cls, r) -> "ScoreResult":
        """One ScoreStream answer: its per-request error, or its result."""
        if r.HasField("error"):
            return cls.failed(r.id, ScoreError(_code_name(r.error.code), r.error.message, r.id))
        return cls.from_proto(r)

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
            response_votes=[x.votes for x in r.rewards],
            valid_samples=r.valid_samples,
            invalid_samples=r.invalid_samples,
            group=GroupResult.from_proto(r.group) if r.HasField("group") else None,
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


def _group(group: GroupLike) -> "pb.Group":
    if isinstance(group, Group):
        key, size, wait_ms = group.key, group.size, group.wait_ms
    elif isinstance(group, Mapping):
        unknown = set(group) - {"key", "size", "wait_ms"}
        if unknown:
            raise ValueError(f"group: unknown fields {sorted(unknown)} (expected key, size, wait_ms)")
        key, size, wait_ms = group["key"], group["size"], group.get("wait_ms") or 0
    else:
        raise TypeError(f"group must be a Group or a dict with key, size, wait_ms; got {type(group).__name__}")
    if not isinstance(key, str) or not 1 <= len(key.encode()) <= 256:
        raise ValueError("group.key must be a string of 1..256 bytes")
    return pb.Group(key=key, size=int(size), wait_ms=int(wait_ms))


def build_request(query: Conversation, responses: Sequence[str], *, k: int = 1, k_meta: Optional[int] = None,
                  temperature: Optional[float] = None, top_p: Optional[float] = None, max_new_tokens: int = 0,
                  seed: Optional[int] = None, criteria: Sequence[str] = (), label: Optional[int] = None,
                  return_samples: bool = False, id: str = "", model: str = "",
                  group: Optional[GroupLike] = None) -> "pb.ScoreRequest":
    """A ScoreRequest. `label` is the index of the best response (n >= 2). `group`: a `Group`
    or a dict {"key", "size", "wait_ms"} making the request a member of that group."""
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
                          criteria=list(criteria), sampling=sampling, return_samples=return_samples, model=model)
    if label is not None:
        req.label.best = label
    if group is not None:
        req.group.CopyFrom(_group(group))
    return req


def request_of(item: dict):
    """A ScoreRequest from one of `score_many`'s dicts (`query`, `responses` and
    `build_request`'s keywords)."""
    item = dict(item)
    return build_request(item.pop("query"), item.pop("responses"), **item)


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

    def score(self, query: Conversation, responses: Sequence[str], *, timeout: Optional[float] = None,
              **kw) -> ScoreResult:
        """Scores the responses to a query (a string, or a list of {"role", "content"}).
        `timeout`: seconds for this call (default: the client's); the router stops the
        request's work when it passes (DEADLINE_EXCEEDED). `group=`: see `build_request`."""
        try:
            r = self.stub.Score(build_request(query, responses, **kw), timeout=timeout or self.timeout,
                                metadata=self.metadata)
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
        bad: list = []  # an exception building a request (a malformed dict), raised after the answers

        def gen():
            for r in requests:
                if sem is not None:
                    while not sem.acquire(timeout=0.2):
                        if stop.is_set():
                            return
                if stop.is_set():
                    return
                try:
                    req = request_of(r)
                except Exception as e:  # noqa: BLE001 - re-raised in the caller's thread
                    bad.append(e)
                    return
                yield req

        call = self.stub.ScoreStream(gen(), timeout=timeout or self.timeout, metadata=self.metadata)
        try:
            for r in call:
                if sem is not None:
                    sem.release()
                yield ScoreResult.from_stream(r)
        except grpc.RpcError as e:
            raise ScoreError(e.code().name, e.details()) from None
        finally:
            stop.set()
            call.cancel()
        if bad:
            raise bad[0]

    def close(self):
        self.channel.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
