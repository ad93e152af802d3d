from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Message(_message.Message):
    __slots__ = ("role", "content")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    role: str
    content: str
    def __init__(self, role: _Optional[str] = ..., content: _Optional[str] = ...) -> None: ...

class Sampling(_message.Message):
    __slots__ = ("k", "k_meta", "temperature", "top_p", "max_new_tokens", "seed", "no_shuffle", "adaptive")
    K_FIELD_NUMBER: _ClassVar[int]
    K_META_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NO_SHUFFLE_FIELD_NUMBER: _ClassVar[int]
    ADAPTIVE_FIELD_NUMBER: _ClassVar[int]
    k: int
    k_meta: int
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    no_shuffle: bool
    adaptive: Adaptive
    def __init__(self, k: _Optional[int] = ..., k_meta: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., seed: _Optional[int] = ..., no_shuffle: bool = ..., adaptive: _Optional[_Union[Adaptive, _Mapping]] = ...) -> None: ...

class Adaptive(_message.Message):
    __slots__ = ("rule", "confidence", "first_wave")
    RULE_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    FIRST_WAVE_FIELD_NUMBER: _ClassVar[int]
    rule: str
    confidence: float
    first_wave: int
    def __init__(self, rule: _Optional[str] = ..., confidence: _Optional[float] = ..., first_wave: _Optional[int] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ("best", "rating", "correct")
    BEST_FIELD_NUMBER: _ClassVar[int]
    RATING_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    best: int
    rating: int
    correct: bool
    def __init__(self, best: _Optional[int] = ..., rating: _Optional[int] = ..., correct: bool = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("id", "conversation", "responses", "criteria", "sampling", "label", "return_samples", "model", "hinted", "group")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONVERSATION_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    SAMPLING_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    RETURN_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    HINTED_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    id: str
    conversation: _containers.RepeatedCompositeFieldContainer[Message]
    responses: _containers.RepeatedScalarFieldContainer[str]
    criteria: _containers.RepeatedScalarFieldContainer[str]
    sampling: Sampling
    label: Label
    return_samples: bool
    model: str
    hinted: bool
    group: Group
    def __init__(self, id: _Optional[str] = ..., conversation: _Optional[_Iterable[_Union[Message, _Mapping]]] = ..., responses: _Optional[_Iterable[str]] = ..., criteria: _Optional[_Iterable[str]] = ..., sampling: _Optional[_Union[Sampling, _Mapping]] = ..., label: _Optional[_Union[Label, _Mapping]] = ..., return_samples: bool = ..., model: _Optional[str] = ..., hinted: bool = ..., group: _Optional[_Union[Group, _Mapping]] = ...) -> None: ...

class Group(_message.Message):
    __slots__ = ("key", "size", "wait_ms")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    key: str
    size: int
    wait_ms: int
    def __init__(self, key: _Optional[str] = ..., size: _Optional[int] = ..., wait_ms: _Optional[int] = ...) -> None: ...

class ResponseReward(_message.Message):
    __slots__ = ("reward", "mean_score", "votes")
    REWARD_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORE_FIELD_NUMBER: _ClassVar[int]
    VOTES_FIELD_NUMBER: _ClassVar[int]
    reward: int
    mean_score: float
    votes: int
    def __init__(self, reward: _Optional[int] = ..., mean_score: _Optional[float] = ..., votes: _Optional[int] = ...) -> None: ...

class InvalidJudgement(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class Scores(_message.Message):
    __slots__ = ("shown", "original")
    SHOWN_FIELD_NUMBER: _ClassVar[int]
    ORIGINAL_FIELD_NUMBER: _ClassVar[int]
    shown: _containers.RepeatedScalarFieldContainer[int]
    original: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, shown: _Optional[_Iterable[int]] = ..., original: _Optional[_Iterable[int]] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ("index", "text", "order", "scores", "invalid", "meta_score", "kept", "correct", "generated_tokens", "finish_reason", "worker")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ORDER_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    INVALID_FIELD_NUMBER: _ClassVar[int]
    META_SCORE_FIELD_NUMBER: _ClassVar[int]
    KEPT_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    WORKER_FIELD_NUMBER: _ClassVar[int]
    index: int
    text: str
    order: _containers.RepeatedScalarFieldContainer[int]
    scores: Scores
    invalid: InvalidJudgement
    meta_score: float
    kept: bool
    correct: bool
    generated_tokens: int
    finish_reason: str
    worker: str
    def __init__(self, index: _Optional[int] = ..., text: _Optional[str] = ..., order: _Optional[_Iterable[int]] = ..., scores: _Optional[_Union[Scores, _Mapping]] = ..., invalid: _Optional[_Union[InvalidJudgement, _Mapping]] = ..., meta_score: _Optional[float] = ..., kept: bool = ..., correct: bool = ..., generated_tokens: _Optional[int] = ..., finish_reason: _Optional[str] = ..., worker: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "generated_tokens", "cached_prompt_tokens", "meta_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    META_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    generated_tokens: int
    cached_prompt_tokens: int
    meta_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., generated_tokens: _Optional[int] = ..., cached_prompt_tokens: _Optional[int] = ..., meta_tokens: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("total_ms", "queue_ms", "generate_ms", "meta_ms")
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATE_MS_FIELD_NUMBER: _ClassVar[int]
    META_MS_FIELD_NUMBER: _ClassVar[int]
    total_ms: float
    queue_ms: float
    generate_ms: float
    meta_ms: float
    def __init__(self, total_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., generate_ms: _Optional[float] = ..., meta_ms: _Optional[float] = ...) -> None: ...

class ScoreError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: int
    message: str
    def __init__(self, code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("id", "rewards", "best", "tie", "valid_samples", "invalid_samples", "correct", "samples", "usage", "timings", "seed", "k_meta", "model", "error", "meta_fallback", "group", "samples_used")
    ID_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    BEST_FIELD_NUMBER: _ClassVar[int]
    TIE_FIELD_NUMBER: _ClassVar[int]
    VALID_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    INVALID_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    CORRECT_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    K_META_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    META_FALLBACK_FIELD_NUMBER: _ClassVar[int]
    GROUP_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_USED_FIELD_NUMBER: _ClassVar[int]
    id: str
    rewards: _containers.RepeatedCompositeFieldContainer[ResponseReward]
    best: int
    tie: bool
    valid_samples: int
    invalid_samples: int
    correct: bool
    samples: _containers.RepeatedCompositeFieldContainer[Sample]
    usage: Usage
    timings: Timings
    seed: int
    k_meta: int
    model: str
    error: ScoreError
    meta_fallback: str
    group: GroupResult
    samples_used: int
    def __init__(self, id: _Optional[str] = ..., rewards: _Optional[_Iterable[_Union[ResponseReward, _Mapping]]] = ..., best: _Optional[int] = ..., tie: bool = ..., valid_samples: _Optional[int] = ..., invalid_samples: _Optional[int] = ..., correct: bool = ..., samples: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., seed: _Optional[int] = ..., k_meta: _Optional[int] = ..., model: _Optional[str] = ..., error: _Optional[_Union[ScoreError, _Mapping]] = ..., meta_fallback: _Optional[str] = ..., group: _Optional[_Union[GroupResult, _Mapping]] = ..., samples_used: _Optional[int] = ...) -> None: ...

class GroupResult(_message.Message):
    __slots__ = ("size", "responses", "members", "partial", "subgroups", "wait_ms", "mean_scores", "positions")
    SIZE_FIELD_NUMBER: _ClassVar[int]
    RESPONSES_FIELD_NUMBER: _ClassVar[int]
    MEMBERS_FIELD_NUMBER: _ClassVar[int]
    PARTIAL_FIELD_NUMBER: _ClassVar[int]
    SUBGROUPS_FIELD_NUMBER: _ClassVar[int]
    WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    MEAN_SCORES_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    size: int
    responses: int
    members: int
    partial: bool
    subgroups: int
    wait_ms: float
    mean_scores: _containers.RepeatedScalarFieldContainer[float]
    positions: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, size: _Optional[int] = ..., responses: _Optional[int] = ..., members: _Optional[int] = ..., partial: bool = ..., subgroups: _Optional[int] = ..., wait_ms: _Optional[float] = ..., mean_scores: _Optional[_Iterable[float]] = ..., positions: _Optional[_Iterable[int]] = ...) -> None: ...
