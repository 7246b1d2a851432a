"""One logged model call in the form every log format is read into: OpenAI chat messages, which chat templates read.

A message is {"role", "content": str}; an assistant turn that calls tools also has "tool_calls"
([{"id", "type": "function", "function": {"name", "arguments"}}], arguments parsed where they are JSON, as chat
templates expect), and a tool turn its "tool_call_id" and "name" where the log gives them. Content given as a list
of parts keeps its text parts, joined by newlines; image, audio and file parts are dropped. A `developer` turn is a
system turn. Any other field of a message is dropped.
"""

import json
from dataclasses import dataclass
from datetime import UTC, datetime

ROLES = ("system", "user", "assistant", "tool")
ROLE_ALIASES = {"developer": "system"}
TEXT_PARTS = {"text": "text", "input_text": "text", "output_text": "text", "refusal": "refusal"}  # part type -> its text field


@dataclass
class Trace:
    """A logged model call: the prompt (the conversation up to its last user or tool turn) and what else the log says."""

    messages: list[dict]
    tools: list[dict] | None = None
    reply: str | None = None  # the text the model answered, where the log has it
    model: str | None = None
    request_id: str | None = None
    requested_at: datetime | None = None


def as_json(value: object, name: str) -> object:
    """A field that may hold JSON text (a Parquet string column, an OpenTelemetry attribute) as its value."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except json.JSONDecodeError as err:
        raise ValueError(f"{name!r} is text that is not JSON ({err.msg})") from err


def content_text(content: object, role: str) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise ValueError(f"a {role} message's content is neither text nor a list of parts")
    texts = []
    for part in content:
        if isinstance(part, str):
            texts.append(part)
        elif not isinstance(part, dict):
            raise ValueError(f"a {role} message has a content part that is not an object")
        elif isinstance(kind := part.get("type"), str) and kind in TEXT_PARTS:
            text = part.get(TEXT_PARTS[kind], part.get("content"))  # OpenTelemetry's text parts use "content"
            if not isinstance(text, str):
                raise ValueError(f"a {role} message has a {part['type']} part without its text")
            texts.append(text)
    return "\n".join(texts)


def arguments_value(arguments: object) -> object:
    """Tool call arguments as chat templates expect them: an object where the log holds it as JSON text."""
    if isinstance(arguments, str):
        try:
            parsed = json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
        return parsed if isinstance(parsed, dict) else arguments
    return {} if arguments is None else arguments


def tool_call(call: object) -> dict:
    if not isinstance(call, dict):
        raise ValueError("a tool call is not an object")
    kind = call.get("type", "function")
    body = call.get("function") or (call.get(kind) if isinstance(kind, str) else None) or {}
    name = body.get("name") if isinstance(body, dict) else None
    if not isinstance(name, str) or not name:
        raise ValueError("a tool call has no function name")
    arguments = arguments_value(body.get("arguments", body.get("input")))
    out = {"type": "function", "function": {"name": name, "arguments": arguments}}
    return {"id": call["id"], **out} if isinstance(call.get("id"), str) else out


def message(raw: object) -> dict:
    """One message in the common form; ValueError names what is wrong with it."""
    if not isinstance(raw, dict):
        raise ValueError("a message is not an object")
    role = raw.get("role")
    role = ROLE_ALIASES.get(role, role) if isinstance(role, str) else role
    if role not in ROLES:
        raise ValueError(f"unknown message role {raw.get('role')!r}")
    calls = raw.get("tool_calls") if role == "assistant" else None
    if raw.get("content") is None and not calls:
        raise ValueError(f"a {role} message has no content")
    out = {"role": role, "content": content_text(raw.get("content"), role)}
    if calls:
        if not isinstance(calls, list):
            raise ValueError("'tool_calls' is not a list")
        out["tool_calls"] = [tool_call(c) for c in calls]
    if role == "tool":
        out |= {k: raw[k] for k in ("tool_call_id", "name") if isinstance(raw.get(k), str)}
    return out


def tool_definitions(tools: object) -> list[dict] | None:
    """Tool definitions in the chat-completions form, {"type": "function", "function": {name, description, parameters}}."""
    tools = as_json(tools, "tools")
    if not tools:
        return None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise ValueError("'tools' is not a list of objects")
    # The flat form ({"type": "function", "name": ...}) of OpenTelemetry and the Responses API gets its "function".
    tools = [t if "function" in t else {"type": "function", "function": {k: v for k, v in t.items() if k != "type"}} for t in tools]
    if not all(isinstance(t["function"], dict) and isinstance(t["function"].get("name"), str) for t in tools):
        raise ValueError("a tool definition has no function name")  # a chat template would fail on it
    return tools


def last_user_turn(messages: list[dict]) -> int:
    """The index of the turn the domain's instruction goes into: the last user turn (a tool turn may follow it)."""
    return max(i for i, m in enumerate(messages) if m["role"] == "user")


def conversation(raw: object) -> tuple[list[dict], str | None]:
    """(the prompt, the logged reply): a logged conversation may end with the assistant's answer, which is not
    part of the prompt. The prompt runs to the last user or tool turn; the reply is the text of the answer after it."""
    if not isinstance(raw, list) or not raw:
        raise ValueError("'messages' is not a non-empty list")
    messages = [message(m) for m in raw]
    asks = [i for i, m in enumerate(messages) if m["role"] in ("user", "tool")]
    if not any(m["role"] == "user" for m in messages):
        raise ValueError("conversation has no user turn to answer")
    return messages[: asks[-1] + 1], reply_text(messages[asks[-1] + 1 :])


def reply_text(answers: list) -> str | None:
    """The text of the last of these logged answers that has any."""
    return next((m["content"] for m in reversed([message(a) for a in answers]) if m["content"]), None)


def timestamp(value: object) -> datetime | None:
    """A request time as UTC: ISO-8601 text, a datetime, or a Unix time in seconds, milliseconds, microseconds or
    nanoseconds (told apart by size), as numbers or digits."""
    if value is None or isinstance(value, datetime):
        return value.astimezone(UTC).replace(tzinfo=None) if value and value.tzinfo else value
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, int | float) and not isinstance(value, bool):
        scale = next(s for s, limit in ((1, 1e11), (1e3, 1e14), (1e6, 1e17), (1e9, float("inf"))) if abs(value) < limit)
        try:
            return datetime.fromtimestamp(value / scale, UTC).replace(tzinfo=None)
        except (OverflowError, OSError) as err:
            raise ValueError(f"timestamp {value!r} is out of range") from err
    if isinstance(value, str):
        try:
            return timestamp(datetime.fromisoformat(value.strip()))
        except ValueError:
            pass
    raise ValueError(f"timestamp {value!r} is neither ISO-8601 nor a Unix time")


def text_field(record: dict, *names: str) -> str | None:
    """The first of these fields that holds text (or a number, as an id may be)."""
    for name in names:
        value = record.get(name)
        if isinstance(value, str) and value or isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def time_field(record: dict, *names: str) -> datetime | None:
    """The first of these fields that is set, as a request time."""
    return timestamp(next((record[name] for name in names if record.get(name) not in (None, "")), None))
