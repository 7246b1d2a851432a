"""The OpenAI-compatible endpoint in front of the champion's backend: forwards chat completions, logs each exchange.

Applications call one stable model name (`/v1/models` lists it, with the checkpoint that answers); a response's
`model` names the snapshot that wrote it, `<name>@<policy version>`, as OpenAI's responses name a dated
snapshot. The request is logged as received and the response as returned (a stream as the ChatCompletion its
chunks amount to); requests the backend refuses are returned as they are and not logged.
"""

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tao_dagster.domain import Domain
from tao_dagster.serving.backends import Backend
from tao_dagster.serving.champion import Champion
from tao_dagster.serving.settings import API_KEY_VARIABLE, ServeSettings
from tao_dagster.serving.tracelog import TraceLog, exchange
from tao_dagster.traces.messages import content_text, last_user_turn

log = logging.getLogger(__name__)


def error(
    status: int, message: str, kind: str = "invalid_request_error", code: str | None = None, param: str | None = None
) -> JSONResponse:
    """An error in OpenAI's shape, which its clients raise as the matching exception."""
    return JSONResponse({"error": {"message": message, "type": kind, "param": param, "code": code}}, status_code=status)


def with_instruction(domain: Domain, messages):
    """The conversation as the model was trained on it: the domain's plain template around the last user turn,
    whose text is read as ingestion reads it (text parts joined by newlines, other parts dropped); every other
    turn goes as sent. A conversation without a readable user turn goes as sent, for the backend to answer or refuse."""
    try:
        ask = last_user_turn(messages)
        text = content_text(messages[ask].get("content"), "user")
    except (ValueError, TypeError, KeyError, AttributeError):
        return messages
    return domain.messages([*messages[:ask], {"role": "user", "content": text}, *messages[ask + 1 :]])


def assemble(chunks: list[dict]) -> dict:
    """The ChatCompletion a stream of chunks amounts to: contents and tool-call pieces joined per choice."""
    choices: dict[int, dict] = {}
    for chunk in chunks:
        for part in chunk.get("choices", []):
            choice = choices.setdefault(part["index"], {"index": part["index"], "message": {"role": "assistant", "content": None}})
            message, delta = choice["message"], part.get("delta") or {}
            if delta.get("content"):
                message["content"] = (message["content"] or "") + delta["content"]
            for piece in delta.get("tool_calls") or []:
                calls = message.setdefault("tool_calls", [])
                while len(calls) <= piece["index"]:
                    calls.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
                call, function = calls[piece["index"]], piece.get("function") or {}
                call["id"] = piece.get("id") or call["id"]
                call["function"]["name"] += function.get("name") or ""
                call["function"]["arguments"] += function.get("arguments") or ""
            choice["finish_reason"] = part.get("finish_reason") or choice.get("finish_reason")
    first, usage = chunks[0], next((c["usage"] for c in reversed(chunks) if c.get("usage")), None)
    body = {"id": first["id"], "object": "chat.completion", "created": first["created"], "model": first["model"]}
    return {**body, "choices": [choices[i] for i in sorted(choices)], "usage": usage}


class Proxy:
    def __init__(self, champion: Champion, domain: Domain, traces: TraceLog, serve: ServeSettings, client: httpx.AsyncClient):
        self.champion, self.domain, self.traces, self.serve, self.client = champion, domain, traces, serve, client
        self.api_key = os.environ.get(API_KEY_VARIABLE) or None
        self.created = int(time.time())

    def refused(self, request: Request) -> JSONResponse | None:
        if self.api_key is None:
            return None
        given = request.headers.get("authorization", "").removeprefix("Bearer ").strip()
        if hmac.compare_digest(given.encode(), self.api_key.encode()):
            return None
        return error(401, f"missing or wrong API key: send the server's {API_KEY_VARIABLE} as a bearer token", code="invalid_api_key")

    def model_card(self, backend: Backend) -> dict:
        policy = backend.policy
        card = {"id": self.champion.name, "object": "model", "created": self.created, "owned_by": "tao-dagster", "root": backend.name}
        return {**card, "policy_version": policy.version, "checkpoint_id": policy.checkpoint_id, "model_version": policy.model_version}

    async def models(self, request: Request) -> Response:
        backend = self.champion.active
        if refused := self.refused(request):
            return refused
        if backend is None:
            return error(503, "the model is starting", "service_unavailable")
        return JSONResponse({"object": "list", "data": [self.model_card(backend)]})

    async def chat_completions(self, request: Request) -> Response:
        if refused := self.refused(request):
            return refused
        received, request_id = time.time(), f"req-{uuid.uuid4().hex}"
        try:
            body = json.loads(await request.body())
        except ValueError as err:
            return error(400, f"the request body is not JSON: {err}")
        if not isinstance(body, dict) or body.get("model") != self.champion.name:
            model = body.get("model") if isinstance(body, dict) else None
            return error(404, f"model {model!r} is not served here; use {self.champion.name!r}", code="model_not_found", param="model")
        backend = self.champion.active
        if backend is None:
            return error(503, "the model is starting", "service_unavailable")
        messages = with_instruction(self.domain, body.get("messages")) if self.serve.add_instruction else body.get("messages")
        forwarded = {**body, "model": backend.name, "messages": messages}
        headers = {"x-request-id": request_id}
        backend.in_flight += 1  # no await between reading `active` and this: a switch cannot slip in
        if body.get("stream"):
            return await self.stream(backend, body, forwarded, request_id, received)
        try:
            answer = await self.client.post(f"{backend.url}/chat/completions", json=forwarded, headers=backend.headers)
        except httpx.TransportError as err:
            return error(502, f"the backend for {backend.policy.version} did not answer: {err}", "server_error")
        finally:
            backend.in_flight -= 1
        if answer.status_code == 200:
            self.traces.write(exchange(request_id, received, body, answer.json()))
        return Response(answer.content, answer.status_code, headers, media_type="application/json")

    async def stream(self, backend: Backend, body: dict, forwarded: dict, request_id: str, received: float) -> Response:
        """Relay the backend's server-sent events as they come; usage is always asked for (the log needs it) and
        passed on only if the client asked."""
        options = body.get("stream_options") or {}
        forwarded["stream_options"] = {**options, "include_usage": True}
        try:
            answer = await self.client.send(
                self.client.build_request("POST", f"{backend.url}/chat/completions", json=forwarded, headers=backend.headers), stream=True
            )
        except httpx.TransportError as err:
            backend.in_flight -= 1
            return error(502, f"the backend for {backend.policy.version} did not answer: {err}", "server_error")
        if answer.status_code != 200:
            content = await answer.aread()
            await answer.aclose()
            backend.in_flight -= 1
            return Response(content, answer.status_code, media_type="application/json")

        async def relay() -> AsyncIterator[str]:
            chunks, done = [], False
            try:
                async for line in answer.aiter_lines():
                    data = line.removeprefix("data: ").strip() if line.startswith("data: ") else None
                    if data == "[DONE]":
                        done = True
                    elif data:
                        chunk = json.loads(data)
                        chunks.append(chunk)
                        if not chunk.get("choices") and chunk.get("usage") and not options.get("include_usage"):
                            continue
                    yield line + "\n"
            finally:
                await answer.aclose()
                backend.in_flight -= 1
            if done and chunks:
                self.traces.write(exchange(request_id, received, body, assemble(chunks)))

        return StreamingResponse(relay(), media_type="text/event-stream", headers={"x-request-id": request_id})

    async def health(self, request: Request) -> Response:
        backend = self.champion.active
        if backend is None:
            return error(503, "the model is starting", "service_unavailable")
        return JSONResponse({"status": "ok", "policy_version": backend.policy.version})


def build_app(proxy: Proxy, on_first_failure) -> FastAPI:
    """The endpoint's routes; its lifespan runs the champion follower and the log rotation, and on the way out
    stops every backend and closes the open log file."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        async def rotate_old_files() -> None:
            while True:
                await asyncio.sleep(min(1.0, proxy.serve.rotate_seconds))
                proxy.traces.rotate_if_old()

        tasks = [asyncio.create_task(proxy.champion.follow(on_first_failure)), asyncio.create_task(rotate_old_files())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            proxy.champion.stop_all()
            proxy.traces.rotate()
            await proxy.client.aclose()

    app = FastAPI(title="tao-dagster serve", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.add_api_route("/v1/chat/completions", proxy.chat_completions, methods=["POST"])
    app.add_api_route("/v1/models", proxy.models, methods=["GET"])
    app.add_api_route("/health", proxy.health, methods=["GET"])
    return app
