"""Whether a prompt fits the model's window, counted in the policy's tokens with every strategy that may send it.

Ingestion checks each prompt with the longest of its rendered requests (instruction, template, few-shot examples,
answer prefix) plus that strategy's `max_tokens`, so that one long prompt is quarantined with the reason (or cut,
under `long_prompts: truncate`) before an engine sees it. Generation checks every request again
(generation.too_long) and skips one that cannot fit, for a window or a domain changed since ingestion.
"""

from dataclasses import dataclass, replace

from tao_dagster.domain import Domain
from tao_dagster.generation import TokenCounter
from tao_dagster.ingest import BadRow, LongPrompts, ParsedFile, ParsedRow, normalise_text
from tao_dagster.policies import PolicySettings
from tao_dagster.traces import last_user_turn
from tao_dagster.traces.files import excerpt

BATCH = 4096  # conversations counted per tokenizer call: bounded memory for any file
# Tokens a prompt's estimated count (its template's text and the prompt counted apart) may differ from the exact one
# by, at the joins: far more than the one or two tokens of a real tokenizer. Prompts this close are counted exactly.
SLACK = 16
PROMPT = "\x00prompt\x00"  # stands in for the prompt in a template


@dataclass(frozen=True)
class Overrun:
    """The request that overruns the window most, for one prompt."""

    strategy: str
    prompt_tokens: int
    max_tokens: int
    window: int

    @property
    def excess(self) -> int:
        return self.prompt_tokens + self.max_tokens - self.window

    def reason(self) -> str:
        return (
            f"prompt is {self.prompt_tokens} tokens with strategy {self.strategy!r}, whose answer takes up to {self.max_tokens} "
            f"more: {self.excess} over the model's window of {self.window} tokens (max_model_len)"
        )


class WindowCheck:
    """Counts a domain's requests in a tokenizer against a window of `window` tokens."""

    def __init__(self, spec: Domain, tokenizer, window: int):
        self.spec, self.counter, self.window = spec, TokenCounter(tokenizer), window
        self.strategies = spec.requested_strategies()
        self.around_prompt = {t: self.template_text(t) for t in {s.template for s in self.strategies}}
        self.bytes_bound = bytes_bound_tokens(tokenizer)

    def surely_fits(self, conversation: list[dict]) -> bool:
        """Whether every strategy's request fits even with a token for each byte of every turn, which a tokenizer
        with `bytes_bound` never exceeds (and SLACK for the joins of the prompt and its template's text): such a
        prompt, most of them, needs no tokenizing."""
        ask = last_user_turn(conversation)
        earlier = sum(len((m.get("content") or "").encode()) for i, m in enumerate(conversation) if i != ask)
        prompt, roles = len(conversation[ask]["content"].encode()), tuple(m["role"] for m in conversation)
        return all(
            earlier
            + around
            + uses * prompt
            + self.counter.template_tokens(roles, s.prefix_for(conversation))
            + s.sampling.max_tokens
            + SLACK
            <= self.window
            for s in self.strategies
            for around, uses in [self.around_prompt[s.template]]
        )

    def template_text(self, template: str) -> tuple[int, int]:
        """(tokens of a strategy template's own text in the last turn, how many times the prompt goes into it)."""
        pieces = self.spec.messages([{"role": "user", "content": PROMPT}], template)[-1]["content"].split(PROMPT)
        return sum(self.counter.content_tokens(pieces)), len(pieces) - 1

    def prompt_tokens(self, conversations: list[list[dict]], exact: bool = True) -> list[list[int]]:
        """len(render()) of each conversation's request with each strategy, without rendering them: a strategy's
        template changes only the last user turn, and the chat template's own tokens only with the roles and the
        prefix. Not `exact`: that turn counted as its template's text and its prompt apart, which is off by the few
        tokens that merge across their joins, and far cheaper than tokenizing every template (few-shot examples
        included) again for every prompt. Tool calls and tool definitions are not counted here: generation checks
        the whole rendered request again."""
        asks = [last_user_turn(c) for c in conversations]
        others = [m.get("content") or "" for c, ask in zip(conversations, asks) for i, m in enumerate(c) if i != ask]
        earlier = self.counter.content_tokens(others)
        if exact:
            last = {
                t: self.counter.content_tokens([self.spec.messages(c, t)[ask]["content"] for c, ask in zip(conversations, asks)])
                for t in self.around_prompt
            }
        else:
            prompts = self.counter.content_tokens([c[ask]["content"] for c, ask in zip(conversations, asks)])
            last = {t: [around + uses * n for n in prompts] for t, (around, uses) in self.around_prompt.items()}
        counts, done = [], 0
        for k, c in enumerate(conversations):
            before, done = sum(earlier[done : done + len(c) - 1]), done + len(c) - 1
            roles = tuple(m["role"] for m in c)
            counts.append([before + last[s.template][k] + self.counter.template_tokens(roles, s.prefix_for(c)) for s in self.strategies])
        return counts

    def worst(self, counts: list[int]) -> Overrun:
        worst = max(range(len(counts)), key=lambda j: counts[j] + self.strategies[j].sampling.max_tokens)
        strategy = self.strategies[worst]
        return Overrun(strategy.name, counts[worst], strategy.sampling.max_tokens, self.window)

    def overruns(self, conversations: list[list[dict]]) -> list[Overrun | None]:
        """Each conversation's worst request over the window, or None where every strategy fits: counted exactly
        where the estimate comes within SLACK tokens of the window, not at all where they surely fit."""
        unsure = [k for k, c in enumerate(conversations) if not (self.bytes_bound and self.surely_fits(c))]
        estimated = [self.worst(counts) for counts in self.prompt_tokens([conversations[k] for k in unsure], exact=False)]
        near = [k for k, over in zip(unsure, estimated) if over.excess > -SLACK]
        found: list[Overrun | None] = [None] * len(conversations)
        for k, counts in zip(near, self.prompt_tokens([conversations[k] for k in near])):
            over = self.worst(counts)
            found[k] = over if over.excess > 0 else None
        return found

    def cut(self, conversation: list[dict], over: Overrun) -> list[dict] | None:
        """The conversation with its last user turn cut, token by token from the end, until every strategy fits; None
        when the other turns and the templates leave no room for it."""
        ask = last_user_turn(conversation)
        prompt = conversation[ask]["content"]
        while over is not None:
            encoded = self.counter.tokenizer(prompt, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
            keep = len(encoded["input_ids"]) - over.excess
            if keep <= 0:
                return None
            prompt = prompt[: encoded["offset_mapping"][keep][0]]  # up to the first token dropped: always shorter
            if not normalise_text(prompt):
                return None
            conversation = [*conversation[:ask], {"role": "user", "content": prompt}, *conversation[ask + 1 :]]
            [over] = self.overruns([conversation])
        return conversation

    def apply(self, parsed: ParsedFile, long_prompts: LongPrompts) -> None:
        """Quarantine ("skip") or cut ("truncate") the parsed rows that do not fit, in place."""
        kept = []
        for start in range(0, len(parsed.rows), BATCH):
            batch = parsed.rows[start : start + BATCH]
            for row, over in zip(batch, self.overruns([r.messages for r in batch])):
                cut = self.cut(row.messages, over) if over and long_prompts == "truncate" else None
                if over is None:
                    kept.append(row)
                elif cut is not None:
                    kept.append(ParsedRow(row.line, replace(row.trace, messages=cut), truncated=True))
                else:
                    room = "; earlier turns and the templates leave no room for it" if long_prompts == "truncate" else ""
                    parsed.bad.append(
                        BadRow(row.line, over.reason() + room, excerpt(row.messages[last_user_turn(row.messages)]["content"]))
                    )
        parsed.rows = kept


def bytes_bound_tokens(tokenizer) -> bool:
    """Whether the tokenizer gives a text at most one token per UTF-8 byte: a byte-level BPE (each token at least one
    byte) with no normalizer, which could lengthen a text (NFC or NFKC can)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or backend.normalizer is not None:
        return False
    from tokenizers import models, pre_tokenizers

    pre = backend.pre_tokenizer
    steps = list(pre) if isinstance(pre, pre_tokenizers.Sequence) else [pre]
    return isinstance(backend.model, models.BPE) and any(isinstance(step, pre_tokenizers.ByteLevel) for step in steps)


def window_check(spec: Domain, policy: PolicySettings) -> WindowCheck:
    """The check with the base model's tokenizer, which the checkpoints tuned from it keep, and its window."""
    from transformers import AutoTokenizer

    return WindowCheck(spec, AutoTokenizer.from_pretrained(policy.base_path()), policy.max_model_len)
