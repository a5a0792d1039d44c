"""Dataset record formats and their checks: pure functions from a parsed JSON line to a reason.

Four formats, one per file (detected from the record's fields):

- ``completion``: ``{"prompt": str, "completion": str}``;
- ``chat``: ``{"messages": [{"role", "content", ...}], "tools"?: [...]}``: a system message first
  (optional), then a user message, then user and assistant turns in alternation; an assistant turn
  may call tools (``tool_calls``), answered by ``tool`` messages; the last message is the
  assistant's answer (what the model learns to say);
- ``preference`` (DPO): ``{"prompt": str | messages, "chosen_response": str, "rejected_response": str}``;
- ``reward`` (GRPO): ``{"prompt": str | messages, ...}`` with at least one answer field for the
  reward to compare against: ``answer``, ``solution`` or ``ground_truth`` (a non-empty string or a
  number), or ``choices`` (a list of strings) with ``label`` (an index into it or one of them).

A message list given as a ``prompt`` ends with the user's turn. Other fields are kept as they are
(a reward function may read them; GRPO hands a reward record's columns to the rewards in one shape,
see ``data.preference.reward_columns``). Each check returns ``None`` for a valid record, else one reason
that names the field, e.g. ``"`messages[2].role` is 'robot'; expected one of ..."``.
"""

from __future__ import annotations

import operator
from itertools import chain, repeat
from typing import Any, Literal

import msgspec

Format = Literal["completion", "chat", "preference", "reward"]
Record = dict[str, Any]

ROLES = ("system", "user", "assistant", "tool")
ANSWER_FIELDS = ("answer", "solution", "ground_truth")
REWARD_FIELDS = (*ANSWER_FIELDS, "choices", "label")

# The fields that make up an example's content: what duplicate and leakage checks compare (an `id`
# or other bookkeeping field does not make two copies of an example different).
CONTENT_FIELDS: dict[Format, tuple[str, ...]] = {
    "completion": ("prompt", "completion"),
    "chat": ("messages", "tools"),
    "preference": ("prompt", "chosen_response", "rejected_response"),
    "reward": ("prompt", *REWARD_FIELDS),
}

# Which formats each training method reads.
METHOD_FORMATS: dict[str, tuple[Format, ...]] = {
    "sft": ("completion", "chat"),
    "dpo": ("preference",),
    "grpo": ("reward",),
}

# Which roles may follow each role (None: the start); after an assistant turn that called tools,
# only tool results may.
_NEXT_ROLES: dict[str | None, tuple[str, ...]] = {
    None: ("system", "user"),
    "system": ("user",),
    "user": ("assistant",),
    "assistant": ("user",),
    "tool": ("tool", "assistant"),
}
_AFTER_TOOL_CALL = ("tool",)
_ROLE_SET = frozenset(ROLES)
_PREFERENCE_KEYS = frozenset(("chosen_response", "rejected_response", "chosen", "rejected"))
_REWARD_KEYS = frozenset(REWARD_FIELDS)

EXPECTED = (
    "expected prompt/completion, messages, prompt/chosen_response/rejected_response (preference) "
    "or prompt with an answer field (reward)"
)


def json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages.

    >>> json_type(None), json_type(True), json_type(3), json_type([]), json_type({})
    ('null', 'boolean', 'number', 'array', 'object')
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def detect_format(record: Record) -> Format | None:
    """The format a record's distinctive fields announce, or None when they announce none.

    >>> detect_format({"prompt": "2+2?", "answer": "4"})
    'reward'
    >>> detect_format({"prompt": "q"}) is None
    True
    """
    if "messages" in record:
        return "chat"
    if not _PREFERENCE_KEYS.isdisjoint(record):
        return "preference"
    if "completion" in record:
        return "completion"
    if not _REWARD_KEYS.isdisjoint(record):
        return "reward"
    return None


def check_record(record: Any, expected: Format | None = None) -> tuple[Format | None, str | None]:
    """Check one parsed line.

    Args:
        record: the parsed JSON value.
        expected: the format of the file so far; it decides how a record that announces no format
            (``{"prompt": ...}`` alone) is judged, so the reason names the field it lacks.

    Returns:
        ``(format, None)`` for a valid record, ``(format or None, reason)`` otherwise.
    """
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {json_type(record)}"
    fmt = detect_format(record)
    if fmt is None:
        if "prompt" not in record:
            keys = ", ".join(sorted(record)) or "none"
            return None, f"unknown record format (keys: {keys}); {EXPECTED}"
        if expected in (None, "chat"):
            return None, (
                "`prompt` alone is not an example: add `completion` (completion record), "
                "`chosen_response` and `rejected_response` (preference record) or an answer field "
                f"(reward record: {', '.join(ANSWER_FIELDS)}, or choices with label)"
            )
        fmt = expected
    if fmt == "chat":
        return fmt, check_chat(record)
    if fmt == "completion":
        return fmt, check_completion(record)
    if fmt == "preference":
        return fmt, check_preference(record)
    return fmt, check_reward(record)


def _text(record: Record, field: str) -> str | None:
    """Reason a required field is not a non-empty string, or None."""
    value = record.get(field)
    if type(value) is str and value and not value.isspace():  # the common case, first
        return None
    if field not in record:
        return f"missing field `{field}`"
    value = record[field]
    if not isinstance(value, str):
        return f"`{field}` must be a string, got {json_type(value)}"
    if not value.strip():
        return f"`{field}` is empty"
    return None


def check_completion(record: Record) -> str | None:
    """``{"prompt": str, "completion": str}``, both non-empty."""
    if "messages" in record:
        return "a record has `prompt`/`completion` or `messages`, not both"
    return _text(record, "prompt") or _text(record, "completion")


def check_chat(record: Record) -> str | None:
    """``{"messages": [...], "tools"?: [...]}`` with roles in order and the assistant's answer last."""
    for field in ("prompt", "completion"):
        if field in record:
            return f"a record has `messages` or `{field}`, not both"
    if "tools" not in record and plain_conversation(record["messages"]):
        return None
    tools = record.get("tools")
    reason, names = _check_tools(tools) if "tools" in record else (None, None)
    return reason or check_messages(record["messages"], "messages", last="assistant", tool_names=names)


_ROLE_CONTENT = frozenset(("role", "content"))
_get_roles = operator.itemgetter("role")
_get_contents = operator.itemgetter("content")
_get_prompt = operator.itemgetter("prompt")
_get_completion = operator.itemgetter("completion")
_valid_role_orders: set[tuple[str, ...]] = set()  # role sequences check_messages accepted, for plain_conversation
MAX_REMEMBERED_ORDERS = 4096


def plain_conversation(messages: Any) -> bool:
    """Whether ``messages`` is a valid conversation of role and text only, checked with a few calls
    into C (most datasets' conversations): a role order already accepted, every message holding
    exactly ``role`` and ``content``, every content non-blank text. False means only "not proven
    here": ``check_messages`` then gives the verdict and the reason.

    >>> plain_conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    True
    >>> plain_conversation([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}])
    False
    """
    if type(messages) is not list or not messages:
        return False
    try:
        if not all(map(_ROLE_CONTENT.issuperset, messages)):
            return False
        roles = tuple(map(_get_roles, messages))
        contents = list(map(_get_contents, messages))
    except (KeyError, TypeError):  # a message without role or content, or not an object
        return False
    if set(map(type, contents)) != {str} or set(map(type, roles)) != {str} or not all(map(str.strip, contents)):
        return False
    return _valid_order(roles)


def _valid_order(roles: tuple[str, ...]) -> bool:
    """Whether ``check_messages`` accepts this order of roles (remembered once accepted)."""
    if roles not in _valid_role_orders:
        if len(_valid_role_orders) >= MAX_REMEMBERED_ORDERS or check_messages([{"role": r, "content": "x"} for r in roles], "messages", "assistant", None):
            return False
        _valid_role_orders.add(roles)
    return True


_COMPLETION_ONLY = frozenset(("prompt", "completion"))
_MESSAGES_ONLY = frozenset(("messages",))
_get_messages = operator.itemgetter("messages")


def plain_records(records: list[Any], fmt: Format) -> bool:
    """Whether every record is a valid ``fmt`` record holding only its own fields, all text:
    completion records of two non-blank strings, or chat records of ``messages`` alone whose
    messages are ``role`` and non-blank ``content`` in an accepted order. Checked with a few calls
    into C for the whole list rather than several per record, for a file's common case. False
    means only "not proven here": ``check_record`` then judges each record.

    >>> plain_records([{"prompt": "2+2?", "completion": "4"}, {"prompt": "3+3?", "completion": "6"}], "completion")
    True
    >>> plain_records([{"prompt": "2+2?", "completion": " "}], "completion")
    False
    >>> plain_records([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}], "chat")
    True
    """
    if fmt not in ("completion", "chat") or not records or set(map(type, records)) != {dict}:
        return False
    if fmt == "completion":
        if not all(map(operator.eq, map(dict.keys, records), repeat(_COMPLETION_ONLY))):
            return False
        texts = list(map(_get_prompt, records)) + list(map(_get_completion, records))
        return set(map(type, texts)) == {str} and all(map(str.strip, texts))
    if not all(map(operator.eq, map(dict.keys, records), repeat(_MESSAGES_ONLY))):
        return False
    conversations = list(map(_get_messages, records))
    if set(map(type, conversations)) != {list}:
        return False
    messages = list(chain.from_iterable(conversations))
    if set(map(type, messages)) != {dict} or not all(map(operator.eq, map(dict.keys, messages), repeat(_ROLE_CONTENT))):
        return False
    contents = list(map(_get_contents, messages))
    if set(map(type, contents)) != {str} or set(map(type, map(_get_roles, messages))) != {str} or not all(map(str.strip, contents)):
        return False
    orders = set(map(tuple, map(map, repeat(_get_roles), conversations)))
    return all(map(_valid_order, orders))  # an empty conversation's order, (), is not valid


# Plain records as typed structs, their fields in key order: msgspec decodes and checks a line's
# shape in one call into C, and encodes the struct back as the record's canonical JSON (the bytes
# ``orjson.dumps(record, option=OPT_SORT_KEYS)`` writes).
class _Message(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    content: str
    role: str


class _Chat(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    messages: tuple[_Message, ...]


class _Completion(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    completion: str
    prompt: str


_PLAIN_DECODERS = {"chat": msgspec.json.Decoder(_Chat), "completion": msgspec.json.Decoder(_Completion)}
_ENCODE = msgspec.json.Encoder().encode
_attr = operator.attrgetter


def plain_canonical_lines(lines: list[bytes | None], fmt: Format) -> list[bytes] | None:
    """The canonical JSON of each line, when every line is a plain ``fmt`` record (what
    ``plain_records`` accepts): decoded straight into typed structs (no dicts), checked with a few
    calls into C for the whole list, encoded back. None means only "not proven here" (a line that
    is not JSON, has other fields or types, a blank text, an order of roles not accepted):
    ``plain_records`` or ``check_record`` then judge the parsed records.

    >>> plain_canonical_lines([b'{"prompt": "2+2?", "completion": "4"}'], "completion")
    [b'{"completion":"4","prompt":"2+2?"}']
    >>> plain_canonical_lines([b'{"prompt": "2+2?", "completion": 4}'], "completion") is None
    True
    """
    decoder = _PLAIN_DECODERS.get(fmt)
    if decoder is None or not lines:
        return None
    try:
        records = list(map(decoder.decode, lines))
    except (ValueError, TypeError):  # not JSON or not UTF-8, another shape, None for an overlong line
        return None
    if fmt == "completion":
        texts = list(map(_attr("prompt"), records)) + list(map(_attr("completion"), records))
    else:
        conversations = list(map(_attr("messages"), records))
        texts = list(map(_attr("content"), chain.from_iterable(conversations)))
        if not all(map(_valid_order, set(map(tuple, map(map, repeat(_attr("role")), conversations))))):
            return None
    if not all(texts) or any(map(str.isspace, texts)):
        return None
    return list(map(_ENCODE, records))


def check_preference(record: Record) -> str | None:
    """A prompt (text or messages) with a chosen and a rejected response that differ."""
    for wrong, right in (("chosen", "chosen_response"), ("rejected", "rejected_response")):
        if wrong in record and right not in record:
            return f"`{wrong}` is not a preference field: name it `{right}`"
    reason = _prompt(record) or _text(record, "chosen_response") or _text(record, "rejected_response")
    if reason:
        return reason
    if record["chosen_response"].strip() == record["rejected_response"].strip():
        return "`chosen_response` and `rejected_response` are identical: the pair prefers nothing"
    return None


def check_reward(record: Record) -> str | None:
    """A prompt (text or messages) and at least one answer field the reward compares against."""
    reason = _prompt(record)
    if reason:
        return reason
    for field in ANSWER_FIELDS:
        if field in record:
            value = record[field]
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                return f"`{field}` must be a string or a number, got {json_type(value)}"
            if isinstance(value, str) and not value.strip():
                return f"`{field}` is empty"
    if "choices" in record or "label" in record:
        reason = _choices(record)
        if reason:
            return reason
    elif not any(field in record for field in ANSWER_FIELDS):
        return f"a reward record needs an answer field: {', '.join(ANSWER_FIELDS)}, or choices with label"
    return None


def _choices(record: Record) -> str | None:
    if "choices" not in record:
        return "`label` needs `choices` to point into"
    if "label" not in record:
        return "`choices` needs a `label` (the index or text of the right choice)"
    choices, label = record["choices"], record["label"]
    if not isinstance(choices, list) or len(choices) < 2:
        return "`choices` must be a list of at least 2 strings"
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            return f"`choices[{i}]` must be a non-empty string, got {json_type(choice) if not isinstance(choice, str) else 'an empty one'}"
    if isinstance(label, bool) or not isinstance(label, (int, str)):
        return f"`label` must be an index into `choices` or one of them, got {json_type(label)}"
    if isinstance(label, int) and not 0 <= label < len(choices):
        return f"`label` {label} is out of range for {len(choices)} choices"
    if isinstance(label, str) and label not in choices:
        return f"`label` {label!r} is not one of `choices`"
    return None


def _prompt(record: Record) -> str | None:
    """A preference or reward prompt: non-empty text, or messages ending with the user's turn."""
    if "prompt" not in record:
        return "missing field `prompt`"
    prompt = record["prompt"]
    if isinstance(prompt, list):
        return check_messages(prompt, "prompt", last="user", tool_names=None)
    return _text(record, "prompt") if isinstance(prompt, str) else (
        f"`prompt` must be a string or a list of messages, got {json_type(prompt)}"
    )


def _name(entry: dict[str, Any]) -> Any:
    """A tool's or tool call's name: OpenAI's ``{"function": {"name"}}`` or a flat ``{"name"}``."""
    function = entry.get("function")
    return function.get("name") if isinstance(function, dict) else entry.get("name")


def _check_tools(tools: Any) -> tuple[str | None, set[str] | None]:
    """Reason the ``tools`` field is malformed (or None), and the tool names it declares."""
    if not isinstance(tools, list):
        return f"`tools` must be a list of tool definitions, got {json_type(tools)}", None
    names = set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict):
            return f"`tools[{i}]` must be an object, got {json_type(tool)}", None
        name = _name(tool)
        if not isinstance(name, str) or not name.strip():
            return f"`tools[{i}]` has no name (expected `function.name`)", None
        names.add(name)
    return None, names


def _check_tool_calls(calls: Any, where: str, tool_names: set[str] | None) -> str | None:
    if not isinstance(calls, list) or not calls:
        return f"`{where}.tool_calls` must be a non-empty list, got {json_type(calls)}"
    for j, call in enumerate(calls):
        at = f"`{where}.tool_calls[{j}]`"
        if not isinstance(call, dict):
            return f"{at} must be an object, got {json_type(call)}"
        name = _name(call)
        if not isinstance(name, str) or not name.strip():
            return f"{at} has no function name (expected `function.name`)"
        function = call.get("function") if isinstance(call.get("function"), dict) else call
        arguments = function.get("arguments", {})
        if not isinstance(arguments, (str, dict)):
            return f"{at} arguments must be a JSON string or an object, got {json_type(arguments)}"
        if tool_names is not None and name not in tool_names:
            return f"{at} calls {name!r}, which is not in `tools` ({', '.join(sorted(tool_names)) or 'none'})"
    return None


def check_messages(messages: Any, field: str, last: Literal["assistant", "user"], tool_names: set[str] | None) -> str | None:
    """A conversation in a valid order.

    Order: an optional system message first; then a user message; a user turn is answered by the
    assistant; an assistant turn with ``tool_calls`` is answered by ``tool`` messages, then the
    assistant again; the conversation ends with ``last``.

    >>> check_messages([{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"}], "messages", "assistant", None)
    "`messages[1].role` is 'user' after 'user'; expected assistant"
    """
    if not isinstance(messages, list) or not messages:
        return f"`{field}` must be a non-empty list of messages, got {json_type(messages) if not isinstance(messages, list) else 'an empty one'}"
    previous: str | None = None
    called = False  # whether the previous assistant turn called tools
    for i, message in enumerate(messages):  # runs for every message of the dataset: no work until a problem
        if type(message) is not dict:
            return f"`{field}[{i}]` must be an object, got {json_type(message)}"
        role = message.get("role")
        if type(role) is not str or role not in _ROLE_SET:
            if "role" not in message:
                return f"missing field `{field}[{i}].role`"
            return f"`{field}[{i}].role` is {role!r}; expected one of {', '.join(ROLES)}"
        allowed = _AFTER_TOOL_CALL if called else _NEXT_ROLES[previous]
        if role not in allowed:
            after = f"after {previous!r}" if previous else "as the first message"
            return f"`{field}[{i}].role` is {role!r} {after}; expected {' or '.join(allowed)}"
        calls = message.get("tool_calls")
        if calls is not None:
            if role != "assistant":
                return f"`{field}[{i}].tool_calls` is only allowed on assistant messages"
            reason = _check_tool_calls(calls, f"{field}[{i}]", tool_names)
            if reason:
                return reason
        called = bool(calls)
        content = message.get("content")
        if type(content) is str:
            if not called and role != "tool" and (not content or content.isspace()):
                return f"`{field}[{i}].content` is empty"
        elif "content" not in message and not called:
            return f"missing field `{field}[{i}].content`"
        elif not (content is None and called):  # an assistant turn that only calls tools may have no text
            return f"`{field}[{i}].content` must be a string, got {json_type(content)}"
        previous = role
    if previous != last:
        if last == "assistant":
            return f"the last message must be from the assistant (it is what the model learns to say), got {previous!r}"
        return f"the last message of `{field}` must be from the user (the responses answer it), got {previous!r}"
    if last == "assistant" and called:
        return "the last (assistant) message only calls tools: it must end with the assistant's text answer"
    return None
