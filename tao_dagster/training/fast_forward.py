"""Forward changes that make DPO cheaper or closer to fp32, with the same loss: each prompt run once for both
answers of its pair (`share_prompts`), and LoRA sums in fp32 under bf16 autocast (`add_lora_in_fp32`).

`share_prompts` replaces TRL's fused log-prob forward and leans on TRL internals, so it runs only on the TRL
versions it is tested with; elsewhere a round takes TRL's own path, slower, and is never failed for it.
"""

import logging

log = logging.getLogger(__name__)

# Logit multipliers some model families apply before the softmax; share_prompts leaves those to TRL's own path.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling")
VOCAB_CHUNK = 32768  # vocabulary columns per LM-head tile, as TRL's fused head
# share_prompts is tested on the TRL that pyproject pins (trl==1.16.*) and uses these of its internals: the
# LM-head kernel, the fused head's output and the forward contract (`model(..., labels=..., fused_lm_head=True)`)
# add_fused_lm_head gives, and the reference pass trainer.AdaptedDPOTrainer adapts the model before.
TESTED_TRL = (1, 16)
TRL_INTERNALS = (
    "trl.kernels:ChunkedLogProbFunction",
    "trl.trainer.utils:FusedCausalLMOutput",
    "trl.trainer.utils:add_fused_lm_head",
    "trl:DPOTrainer._precompute_ref_logps",
)


def untested_trl() -> str | None:
    """Why the installed TRL may not be the one share_prompts was tested on, or None when it is."""
    import importlib

    import trl
    from packaging.version import Version

    if Version(trl.__version__).release[:2] != TESTED_TRL:
        return "outside the tested {}.{}.*".format(*TESTED_TRL)
    for name in TRL_INTERNALS:
        module, _, path = name.partition(":")
        try:
            found = importlib.import_module(module)
            for attribute in path.split("."):
                found = getattr(found, attribute)
        except (ImportError, AttributeError):
            return f"without {module}.{path}"
    return None


def share_prompts(model) -> None:
    """Make TRL's fused log-prob forward (`model(..., labels=..., fused_lm_head=True)`) run each pair's prompt once.

    DPO scores a pair as prompt+chosen and prompt+rejected, so TRL runs every prompt twice, and on a CPU its
    LM head scores every position, prompt and padding included, against the whole 49k-token vocabulary. Here
    the opening that all the batch's prompts share (the chat template and the domain's instruction) runs once
    for the batch, the rest of each prompt once for its pair, their key/value cache is shared by both answers
    of each pair, and only answer tokens go through TRL's chunked LM-head kernel. The log-probs, and so the loss and its gradient,
    are the same; only work that TRL discards is skipped. Batches whose pairs do not start with one shared
    prompt, models under gradient checkpointing (which allows no cache) and models that transform their
    logits take TRL's own path, and so does every batch on a TRL other than the tested one (one warning per
    model). Call after DPOTrainer has added its fused head.
    """
    if hasattr(model, "shares_prompts"):  # patched, or left to TRL, already
        return
    if reason := untested_trl():
        import trl

        log.warning("TRL %s is %s: DPO takes TRL's own forward (same loss, each prompt run twice)", trl.__version__, reason)
        model.shares_prompts = False
        return
    import types

    import torch
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import FusedCausalLMOutput

    trl_forward = model.forward
    text_config = model.config.get_text_config()
    plain_logits = all(getattr(text_config, name, None) in (None, 1.0) for name in LOGIT_TRANSFORMS)

    def shared(ids, starts, pairs: int) -> bool:
        """Whether both rows of each pair (chosen i, rejected i + pairs) start with the same prompt."""
        return bool(pairs) and all(
            starts[i] == starts[i + pairs] and torch.equal(ids[i, : starts[i]], ids[i + pairs, : starts[i]]) for i in range(pairs)
        )

    def forward(self, *args, fused_lm_head=False, labels=None, input_ids=None, attention_mask=None, **kwargs):
        usable = fused_lm_head and plain_logits and labels is not None and input_ids is not None and not args
        usable = usable and len(input_ids) % 2 == 0 and not self.base_model.gradient_checkpointing
        if usable:
            pairs = len(input_ids) // 2
            scored = labels != -100
            starts = scored.int().argmax(dim=1)  # first answer token = prompt length
            usable = shared(input_ids, starts, pairs)
        if not usable:
            kwargs.update(fused_lm_head=fused_lm_head, labels=labels, input_ids=input_ids, attention_mask=attention_mask)
            return trl_forward(*args, **kwargs)
        width, device = input_ids.shape[1], input_ids.device
        ends = attention_mask.sum(dim=1) if attention_mask is not None else torch.full_like(starts, width)
        prompt_lengths = starts[:pairs]
        longest_prompt = int(prompt_lengths.max())
        # The opening all prompts share (chat template and task instruction, most of each prompt) runs once for
        # the batch; each prompt's own rest runs once per pair, from the chosen rows. Each keeps at least one token
        # of its own, whose hidden state predicts its first answer token. Past a shorter prompt come its answer
        # tokens: causal attention keeps them out of the prompt, and the mask below keeps them out of the answers.
        rows = input_ids[:pairs, :longest_prompt]
        same = (rows == rows[:1]).all(dim=0).int()
        common = min(int(same.cumprod(dim=0).sum()), int(prompt_lengths.min()) - 1) if pairs > 1 else 0
        cache = None
        if common:
            cache = self.base_model(input_ids=rows[:1, :common], use_cache=True).past_key_values
            cache.batch_repeat_interleave(pairs)
        rest_positions = torch.arange(common, longest_prompt, device=device).expand(pairs, -1)
        prompts = self.base_model(input_ids=rows[:, common:], position_ids=rest_positions, past_key_values=cache, use_cache=True)
        cache = prompts.past_key_values
        cache.batch_repeat_interleave(2)  # rows: pair 0 twice, pair 1 twice, ...
        chosen_rows = torch.arange(pairs, device=device)
        order = torch.stack([chosen_rows, chosen_rows + pairs], dim=1).flatten()  # chosen 0, rejected 0, chosen 1, ...
        steps = torch.arange(int((ends[order] - starts[order]).max()), device=device)
        positions = starts[order, None] + steps  # each answer token's position in its row
        inside = positions.clamp(max=width - 1)
        prompt_mask = torch.arange(longest_prompt, device=device) < prompt_lengths[:, None]
        mask = torch.cat([prompt_mask.repeat_interleave(2, dim=0), torch.ones_like(positions, dtype=torch.bool)], dim=1)
        # Right padding comes after each answer's last token, so causal attention keeps it out of the answers.
        answer_ids = input_ids[order[:, None], inside]
        answers = self.base_model(input_ids=answer_ids, attention_mask=mask, position_ids=positions, past_key_values=cache, use_cache=True)
        # Hidden state j predicts answer token j: a prompt's last one predicts the first answer token.
        last_prompt = prompts.last_hidden_state[chosen_rows, prompt_lengths - 1 - common].repeat_interleave(2, dim=0)
        hidden = torch.cat([last_prompt[:, None], answers.last_hidden_state[:, :-1]], dim=1)
        counted = scored[order[:, None], inside] & (positions < ends[order, None])
        head = self.get_output_embeddings()
        # The head runs in fp32 even under bf16 autocast: early in training the LoRA weights move the final hidden
        # state by less than bf16's resolution, and a bf16 head would round that progress away.
        with torch.autocast(device.type, enabled=False):
            per_token = ChunkedLogProbFunction.apply(
                hidden[counted].float(), head.weight.float(), head.bias, answer_ids[counted], 1.0, VOCAB_CHUNK,
                None, 1.0, ("log_probs", "entropy", "mean_logits", "is_top1"),
            )  # fmt: skip
        index = (order[:, None].expand_as(positions)[counted], positions[counted] - 1)  # TRL's log_probs[:, t] is token t + 1's
        log_probs, entropy, _, mean_logits, is_top1 = (
            None if x is None else x.new_zeros(input_ids.shape[0], width - 1).index_put(index, x) for x in per_token
        )
        return FusedCausalLMOutput(
            loss=-per_token[0].sum() / max(len(per_token[0]), 1),
            log_probs=log_probs,
            entropy=entropy,
            mean_logits=mean_logits,
            is_top1=is_top1,
            label_mask=scored[:, 1:],
        )

    model.forward = types.MethodType(forward, model)
    model.shares_prompts = True


def add_lora_in_fp32(model) -> None:
    """Keep each LoRA layer's output, base product plus adapter update, in fp32 under bf16 autocast.

    PEFT adds the update to the base layer's bf16 output, and early in training the update is smaller than
    bf16's resolution there: it is rounded away, and the loss falls far more slowly than in fp32 (2.36
    against 2.06 after six steps of bench/training.py). Summed in fp32, the curve follows fp32's, while the
    matrix products stay in bf16. The frozen base path gets the same upcast, so the reference pass (adapters
    off) and the first policy pass agree. Merged layers and LoRA variants keep PEFT's forward.
    """
    import types

    from peft.tuners.lora import Linear

    def forward(self, x, *args, **kwargs):
        if self.merged or self.lora_variant or "adapter_names" in kwargs:
            return Linear.forward(self, x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs).float()
        if not self.disable_adapters:
            for name in self.active_adapters:
                if name in self.lora_A:
                    result = result + self.lora_B[name](self.lora_A[name](self.lora_dropout[name](x))) * self.scaling[name]
        return result

    for module in model.modules():
        if isinstance(module, Linear):
            module.forward = types.MethodType(forward, module)
