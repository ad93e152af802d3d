"""Trainers' prompts and completions as the conversation and response text a GRM judges."""
from __future__ import annotations

import hashlib
import json
from typing import Any

_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


def _content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for p in content:
            if isinstance(p, str):
                parts.append(p)
            elif isinstance(p, dict) and p.get("type", "text") == "text":
                parts.append(str(p.get("text", "")))
        return "".join(parts)
    return str(content)


def prompt_conversation(prompt: Any) -> tuple[list, str]:
    """The conversation a prompt stands for, as [{"role", "content"}] with the system prompt
    and earlier turns kept, and any text of a trailing assistant turn (a prefilled answer that
    the completion continues; it is prepended to the response).

    A string is one user turn (TRL's standard format); a list of messages is a conversation
    (TRL's conversational format). Roles other than system/user/assistant ("tool", ...) become
    user turns that say who spoke."""
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}], ""
    conv = []
    for m in prompt:
        role = str(m.get("role", "user"))
        text = _content_text(m.get("content"))
        if role in _ROLES:
            conv.append({"role": _ROLES[role], "content": text})
        else:
            conv.append({"role": "user", "content": f"[{role}] {text}"})
    prefix = ""
    while conv and conv[-1]["role"] == "assistant":
        prefix = conv.pop()["content"] + prefix
    if not conv:
        conv = [{"role": "user", "content": ""}]
    return conv, prefix


def completion_text(completion: Any) -> str:
    """A completion as the response text: a string (standard format), or the assistant
    messages of a conversational completion ([{"role": "assistant", "content": ...}]) joined;
    tool calls without text are written as JSON."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    texts = []
    for m in completion:
        if m.get("role", "assistant") != "assistant":
            continue
        t = _content_text(m.get("content"))
        if not t and m.get("tool_calls"):
            t = json.dumps(m["tool_calls"], default=str)
        texts.append(t)
    return "\n".join(texts)


def _conv_hash(conv: list) -> str:
    return hashlib.sha256(json.dumps(conv, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]
