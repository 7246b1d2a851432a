"""OpenTelemetry GenAI spans exported as JSON: the SDK's `span.to_json()` (what ConsoleSpanExporter writes) and OTLP
JSON export requests (`{"resourceSpans": [...]}`, what the collector's file exporter writes), whose spans are read
into the SDK's form first.

Messages come from the current attributes (`gen_ai.system_instructions`, `gen_ai.input.messages`,
`gen_ai.output.messages`, `gen_ai.tool.definitions`) or the older indexed ones (`gen_ai.prompt.N.role`,
`.content`, `.tool_calls.M.name` / `.arguments` / `.id`, `.tool_call_id`; `gen_ai.completion.N.content`;
`llm.request.functions.N.*`). Kept besides: the response model (else the request model), `gen_ai.response.id`
(else the span id) and the span's start time. Span events, other attributes and the resource are dropped; a
span of no model call (an HTTP request, a tool execution, an agent) is skipped.
"""

import json

from tao_dagster.traces.messages import Trace, as_json, conversation, reply_text, text_field, timestamp, tool_definitions

INFERENCE_OPERATIONS = ("chat", "text_completion", "generate_content")


def any_value(value: object) -> object:
    """An OTLP JSON AnyValue ({"stringValue": ...}, {"intValue": "3"}, {"arrayValue": {"values": [...]}}, ...)."""
    if not isinstance(value, dict) or not value:
        return None
    kind, inner = next(iter(value.items()))
    if kind == "arrayValue":
        return [any_value(v) for v in inner.get("values", [])]
    if kind == "kvlistValue":
        return {kv["key"]: any_value(kv.get("value")) for kv in inner.get("values", [])}
    return int(inner) if kind == "intValue" else inner


def otlp_spans(export: dict) -> list[dict]:
    """The spans of an OTLP JSON export request, in the SDK's to_json form; ValueError when it is malformed."""
    try:
        spans = [
            {
                "name": span.get("name"),
                "context": {"trace_id": span.get("traceId"), "span_id": span.get("spanId")},
                "start_time": span.get("startTimeUnixNano"),
                "attributes": {a["key"]: any_value(a.get("value")) for a in span.get("attributes", [])},
            }
            for resource in export["resourceSpans"]
            for scope in resource.get("scopeSpans", [])
            for span in scope.get("spans", [])
        ]
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        raise ValueError(f"malformed OTLP export ({type(err).__name__}: {err})") from err
    if not all(isinstance(key, str) for span in spans for key in span["attributes"]):
        raise ValueError("malformed OTLP export (an attribute key is not text)")
    return spans


def _call(fields: dict) -> dict:
    return {"id": fields.get("id"), "type": "function", "function": {"name": fields.get("name"), "arguments": fields.get("arguments")}}


def semconv_messages(raw: object, name: str) -> list[dict]:
    """GenAI messages ({role, parts: [text | tool_call | tool_call_response ...]}) as chat messages; each tool
    response part becomes a tool turn of its own."""
    raw = as_json(raw, name)
    if not isinstance(raw, list):
        raise ValueError(f"{name!r} is not a list of messages")
    out = []
    for m in raw:
        parts = m.get("parts") if isinstance(m, dict) else None
        if not isinstance(parts, list) or not all(isinstance(p, dict) for p in parts):
            raise ValueError(f"a message of {name!r} has no list of parts")
        calls = [_call(p) for p in parts if p.get("type") == "tool_call"]
        responses = [p for p in parts if p.get("type") == "tool_call_response"]
        if calls or len(responses) < len(parts):
            out.append({"role": m.get("role"), "content": parts, **({"tool_calls": calls} if calls else {})})
        for r in responses:
            result = r.get("response")
            text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
            out.append({"role": "tool", "content": text, "tool_call_id": r.get("id")})
    return out


def indexed(attributes: dict, prefix: str) -> list[dict]:
    """Flattened lists (`prefix.0.role`, `prefix.0.tool_calls.1.name`, ...) as a list of objects in index order;
    nested lists stay flattened in each object, for indexed() to read again."""
    entries: dict[int, dict] = {}
    for key, value in attributes.items():
        index, _, field = key.removeprefix(prefix + ".").partition(".")
        if key.startswith(prefix + ".") and index.isdigit() and field:
            entries.setdefault(int(index), {})[field] = value
    return [entries[i] for i in sorted(entries)]


def indexed_messages(attributes: dict, prefix: str) -> list[dict]:
    out = []
    for entry in indexed(attributes, prefix):
        content = entry.get("content")
        if isinstance(content, str) and content.startswith("[{"):  # a list of parts, written as JSON text
            content = as_json(content, f"{prefix} content")
        calls = [_call(c) for c in indexed(entry, "tool_calls")]
        out.append({"role": entry.get("role"), "content": content, **({"tool_calls": calls} if calls else {})})
        out[-1] |= {"tool_call_id": entry["tool_call_id"]} if "tool_call_id" in entry else {}
    return out


def span_trace(span: dict) -> Trace | None:
    """The model call a span records; None for a span of anything else."""
    attributes = span.get("attributes")
    if not isinstance(attributes, dict):
        raise ValueError("the span's 'attributes' is not an object")
    if "gen_ai.input.messages" in attributes:
        system = attributes.get("gen_ai.system_instructions")
        instructions = [{"role": "system", "content": as_json(system, "gen_ai.system_instructions")}] if system else []
        messages = instructions + semconv_messages(attributes["gen_ai.input.messages"], "gen_ai.input.messages")
        replies = semconv_messages(attributes.get("gen_ai.output.messages", "[]"), "gen_ai.output.messages")
        tools = attributes.get("gen_ai.tool.definitions")
    elif any(key.startswith("gen_ai.prompt.") for key in attributes):
        messages, replies = indexed_messages(attributes, "gen_ai.prompt"), indexed_messages(attributes, "gen_ai.completion")
        functions = indexed(attributes, "llm.request.functions")
        tools = [{"type": "function", "function": f | {"parameters": as_json(f.get("parameters", {}), "parameters")}} for f in functions]
    elif attributes.get("gen_ai.operation.name") in INFERENCE_OPERATIONS:
        raise ValueError(
            "a GenAI span without gen_ai.input.messages or gen_ai.prompt.* attributes: its instrumentation did not record "
            "message content (OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT), or put it in span events, which are not read"
        )
    else:
        return None
    prompt, logged = conversation(messages)
    reply = reply_text(replies) or logged
    context = span.get("context") if isinstance(span.get("context"), dict) else {}
    return Trace(
        prompt,
        tool_definitions(tools),
        reply,
        text_field(attributes, "gen_ai.response.model", "gen_ai.request.model"),
        text_field(attributes, "gen_ai.response.id") or text_field(context, "span_id"),
        timestamp(span.get("start_time")),
    )
