"""The OpenAI shapes: chat-completions request/response logs (what gateways, proxies and `tao-dagster serve` write),
batch input and output lines, and the chat / fine-tuning shape (`{"messages": [...]}`, or `{"prompt": "..."}`).

Kept from a request: its messages, tools (`functions`, the older form, become tools) and model; from a response:
the first choice's text, the model that answered and its id. Sampling settings, usage, logprobs, other choices and
a reply that only calls tools are dropped.
"""

import contextlib

from tao_dagster.traces.messages import Trace, as_json, conversation, text_field, time_field, timestamp, tool_definitions


def request_trace(body: object) -> Trace:
    """A chat.completions.create body: its conversation, tools and model (a trailing assistant turn is its reply)."""
    body = as_json(body, "request")
    if not isinstance(body, dict) or "messages" not in body:
        raise ValueError("the request has no 'messages'")
    messages, reply = conversation(body["messages"])
    functions = body.get("functions")
    tools = body.get("tools") or ([{"type": "function", "function": f} for f in functions] if isinstance(functions, list) else None)
    return Trace(messages, tool_definitions(tools), reply, text_field(body, "model"))


def completion_reply(response: object) -> tuple[str | None, str | None, str | None]:
    """(reply text, model, response id) of a ChatCompletion; a response without choices (an error) has no reply."""
    response = as_json(response, "response")
    if response is None:
        return None, None, None
    if not isinstance(response, dict):
        raise ValueError("the response is not an object")
    choices = response.get("choices")
    if choices is None:
        return None, text_field(response, "model"), text_field(response, "id")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        raise ValueError("the response's 'choices' is not a list of objects")
    message = choices[0].get("message") or {}
    text = message.get("content") if isinstance(message, dict) else None
    return (text or None) if isinstance(text, str) else None, text_field(response, "model"), text_field(response, "id")


def chat_completions_trace(record: dict) -> Trace:
    trace = request_trace(record["request"])
    response = as_json(record.get("response"), "response")
    reply, model, response_id = completion_reply(response)
    trace.reply = reply or trace.reply
    trace.model = model or trace.model
    # An inference table's own id and time columns come first, then the log line's, then the response's.
    trace.request_id = text_field(record, "databricks_request_id", "request_id", "id") or response_id
    created = response.get("created") if isinstance(response, dict) else None
    trace.requested_at = time_field(record, "timestamp_ms", "request_time", "timestamp") or timestamp(created)
    return trace


def logged_reply(response: object) -> tuple[str | None, str | None]:
    """(text, model) of a logged reply given as text, a message or a ChatCompletion, also as JSON text. A reply's
    text may itself be JSON (an answer in a domain's format, say): it is a message only with "role" or "content"."""
    parsed = response
    if isinstance(response, str) and response.lstrip().startswith("{"):
        with contextlib.suppress(ValueError):
            parsed = as_json(response, "response")
    if isinstance(parsed, dict) and "choices" in parsed:
        return completion_reply(parsed)[:2]
    if isinstance(parsed, dict) and isinstance(parsed.get("content"), str) and ("role" in parsed or parsed is response):
        return parsed["content"] or None, None
    return (response or None) if isinstance(response, str) else None, None


def messages_trace(record: dict) -> Trace:
    """`{"messages": [...]}` (a chat log, or fine-tuning data whose last assistant turn is the reply), optionally with
    `tools`, `model` and a `response` (text, a message or a ChatCompletion); or `{"prompt": "...", "completion"?: ...}`."""
    if "messages" in record:
        messages, reply = conversation(as_json(record["messages"], "messages"))
        tools = tool_definitions(record.get("tools"))
    elif "prompt" in record:
        if not isinstance(record["prompt"], str):
            raise ValueError("'prompt' is not a string")
        messages, reply, tools = [{"role": "user", "content": record["prompt"]}], None, None
    else:
        raise ValueError("object has neither 'messages' nor 'prompt'")
    logged, model = logged_reply(record.get("response", record.get("completion")))
    requested_at = time_field(record, "timestamp", "request_time", "created_at")
    return Trace(
        messages, tools, logged or reply, model or text_field(record, "model"), text_field(record, "request_id", "id"), requested_at
    )


def batch_trace(record: dict) -> Trace:
    """A batch input line: its body is a chat.completions request and its custom_id the request id. An output line
    holds the reply alone, keyed by custom_id: its prompt is in the input file."""
    if "body" not in record:
        raise ValueError(
            f"an OpenAI batch output line (custom_id {record.get('custom_id')!r}) holds a reply without its prompt: "
            "ingest the batch input file"
        )
    trace = request_trace(record["body"])
    trace.request_id = text_field(record, "custom_id")
    return trace
