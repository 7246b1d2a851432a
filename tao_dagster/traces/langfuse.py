"""A Langfuse observations export: the observation objects of its public API (`GET /api/public/observations`, a page
`{"data": [...], "meta": ...}`) or of an export as JSON / JSON Lines.

A GENERATION observation is a model call: its `input` (a message list, `{"messages": [...], "tools": [...]}` as
the OpenAI integration logs it, or a prompt's text), its `output` (a message, a ChatCompletion or text), `model`,
`id` (the request id) and `startTime` are kept. Usage, cost, model parameters, metadata, scores and the trace
around it are dropped; observations of other types (SPAN, EVENT, TOOL, AGENT, ...) are skipped.
"""

from tao_dagster.traces.messages import Trace, as_json, conversation, text_field, timestamp, tool_definitions
from tao_dagster.traces.openai import logged_reply


def observation_trace(observation: dict) -> Trace | None:
    if observation.get("type") != "GENERATION":
        return None
    given = observation.get("input")
    given = as_json(given, "input") if isinstance(given, str) and given.lstrip().startswith(("[", "{")) else given
    tools = None
    if isinstance(given, dict):
        tools = given.get("tools")
        given = given.get("messages", given.get("prompt"))
    if isinstance(given, str):
        given = [{"role": "user", "content": given}]
    if not isinstance(given, list):
        raise ValueError("the generation's input is neither messages nor text")
    messages, reply = conversation(given)
    logged, model = logged_reply(observation.get("output"))
    return Trace(
        messages,
        tool_definitions(tools),
        logged or reply,
        text_field(observation, "model") or model,
        text_field(observation, "id"),
        timestamp(observation.get("startTime")),
    )
