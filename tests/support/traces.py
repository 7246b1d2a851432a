"""Log records as the libraries that write them write them: requests the official `openai` client sent, answered
by ChatCompletions from `openai`'s types, in the chat-completions log shape gateways and `tao-dagster serve` write;
OpenTelemetry GenAI spans from opentelemetry-sdk; Langfuse observations after the shape its API documents."""

import json
from datetime import datetime, timedelta

import httpx
import openai
from openai.types.chat import ChatCompletion

TOOLS = [
    {"type": "function", "function": {"name": "card_status", "parameters": {"type": "object", "properties": {"card": {"type": "string"}}}}}
]
# A conversation as an application sends it today: developer instructions, content as parts (one of them an image),
# an earlier assistant turn that called a tool, and the tool's result.
CONVERSATION = [
    {"role": "developer", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "Where is my card?"}, {"type": "image_url", "image_url": {"url": "data:,"}}]},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "card_status", "arguments": '{"card": "1234"}'}}],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "shipped on Monday"},
]
# What every reader makes of it: parts joined to text, the image dropped, tool call arguments parsed.
KEPT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Where is my card?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "card_status", "arguments": {"card": "1234"}}}],
    },
    {"role": "tool", "content": "shipped on Monday", "tool_call_id": "call_1"},
]
STARTED = datetime(2026, 11, 2, 9, 30)


def completion(reply: str, index: int = 0) -> ChatCompletion:
    return ChatCompletion(
        id=f"chatcmpl-{index}",
        created=int(STARTED.timestamp()) + index,
        model="gpt-4o-mini-2024-07-18",
        object="chat.completion",
        choices=[{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": reply}}],
        usage={"prompt_tokens": 20, "completion_tokens": 4, "total_tokens": 24},
    )


def gateway_log(conversations: list[list[dict]], tools=TOOLS, replies=None) -> list[dict]:
    """Chat-completions log records, as `tao-dagster serve` and gateways write them: each request as the official
    client sent it (captured from its HTTP request) and the ChatCompletion that answered it (`replies`, in order)."""
    records = []

    def answer(request: httpx.Request) -> httpx.Response:
        index = len(records)
        response = completion(replies[index] if replies else f"Your card shipped ({index}).", index)
        timestamp = (STARTED + timedelta(seconds=index)).isoformat() + "Z"
        records.append({"request_id": f"req-{index}", "timestamp": timestamp, "request": json.loads(request.content)})
        records[-1]["response"] = json.loads(response.model_dump_json())
        return httpx.Response(200, content=response.model_dump_json())

    client = openai.OpenAI(
        api_key="unused", base_url="http://gateway.test/v1", http_client=httpx.Client(transport=httpx.MockTransport(answer))
    )
    for messages in conversations:
        client.chat.completions.create(model="gpt-4o-mini", messages=messages, **({"tools": tools} if tools else {}))
    return records


def jsonl(records: list) -> str:
    return "".join(json.dumps(r) + "\n" for r in records)


def otel_spans():
    """Finished spans from opentelemetry-sdk: a chat span of the current GenAI conventions (JSON attributes), one of
    the older indexed attributes, an HTTP span (no model call) and a chat span whose content was not captured."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from opentelemetry.semconv._incubating.attributes import gen_ai_attributes as gen_ai

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("support-app")
    call = {"type": "tool_call", "id": "call_1", "name": "card_status", "arguments": {"card": "1234"}}
    current = {
        gen_ai.GEN_AI_OPERATION_NAME: "chat",
        gen_ai.GEN_AI_REQUEST_MODEL: "gpt-4o-mini",
        gen_ai.GEN_AI_RESPONSE_MODEL: "gpt-4o-mini-2024-07-18",
        gen_ai.GEN_AI_RESPONSE_ID: "chatcmpl-7",
        gen_ai.GEN_AI_SYSTEM_INSTRUCTIONS: json.dumps([{"type": "text", "content": "Be brief."}]),
        gen_ai.GEN_AI_INPUT_MESSAGES: json.dumps(
            [
                {"role": "user", "parts": [{"type": "text", "content": "Where is my card?"}]},
                {"role": "assistant", "parts": [call]},
                {"role": "tool", "parts": [{"type": "tool_call_response", "id": "call_1", "response": "shipped on Monday"}]},
            ]
        ),
        gen_ai.GEN_AI_OUTPUT_MESSAGES: json.dumps([{"role": "assistant", "parts": [{"type": "text", "content": "It shipped."}]}]),
        gen_ai.GEN_AI_TOOL_DEFINITIONS: json.dumps([{"type": "function", **TOOLS[0]["function"]}]),
    }
    older = {
        "gen_ai.request.model": "gpt-3.5-turbo",
        "gen_ai.prompt.0.role": "system",
        "gen_ai.prompt.0.content": "Be brief.",
        "gen_ai.prompt.1.role": "user",
        "gen_ai.prompt.1.content": "Where is my card?",
        "gen_ai.prompt.2.role": "assistant",
        "gen_ai.prompt.2.tool_calls.0.id": "call_1",
        "gen_ai.prompt.2.tool_calls.0.name": "card_status",
        "gen_ai.prompt.2.tool_calls.0.arguments": '{"card": "1234"}',
        "gen_ai.prompt.3.role": "tool",
        "gen_ai.prompt.3.tool_call_id": "call_1",
        "gen_ai.prompt.3.content": "shipped on Monday",
        "gen_ai.completion.0.role": "assistant",
        "gen_ai.completion.0.content": "It shipped.",
        "llm.request.functions.0.name": "card_status",
        "llm.request.functions.0.parameters": json.dumps(TOOLS[0]["function"]["parameters"]),
    }
    for name, attributes in (
        ("chat", current),
        ("openai.chat", older),
        ("GET /cards", {"http.method": "GET"}),
        ("chat", {"gen_ai.operation.name": "chat"}),
    ):
        with tracer.start_as_current_span(name, attributes=attributes):
            pass
    return exporter.get_finished_spans()


def langfuse_observation(n: int, **fields) -> dict:
    """An observation as Langfuse's public API returns it (GET /api/public/observations)."""
    return {
        "id": f"obs-{n}",
        "traceId": f"trace-{n}",
        "type": "GENERATION",
        "name": "OpenAI-generation",
        "startTime": f"2026-11-02T09:30:0{n}.000Z",
        "endTime": f"2026-11-02T09:30:0{n}.800Z",
        "completionStartTime": None,
        "model": "gpt-4o-mini-2024-07-18",
        "modelParameters": {"temperature": "0.2"},
        "input": [{"role": "user", "content": "How do I top up?"}],
        "output": {"role": "assistant", "content": "Open Cards > Top up."},
        "usage": {"input": 12, "output": 6, "total": 18, "unit": "TOKENS"},
        "level": "DEFAULT",
        "statusMessage": None,
        "parentObservationId": None,
        "promptId": None,
        "metadata": {},
        **fields,
    }
