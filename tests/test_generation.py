import pytest

from tao_dagster.generation import EngineSettings, Request, Sampling, TransformersEngine, open_engine


def test_transformers_engine_generates_one_answer_per_request(tiny_model_dir):
    engine = TransformersEngine(str(tiny_model_dir), EngineSettings(engine="transformers", batch_size=2))
    samplings = [Sampling(0.0, max_tokens=5), Sampling(0.8, max_tokens=7), Sampling(0.0, max_tokens=5)]
    requests = [Request([{"role": "user", "content": f"question number {i}"}], s) for i, s in enumerate(samplings)]
    requests[2] = Request(requests[2].messages, requests[2].sampling, response_prefix='{"topic": "')
    out = engine.generate(requests)
    assert len(out) == 3
    for gen, sampling in zip(out, samplings):
        assert 0 < gen.completion_tokens <= sampling.max_tokens
        assert gen.prompt_tokens > 5
        assert gen.finish_reason in ("stop", "length")
    assert out[2].text.startswith('{"topic": "')  # the given start of the answer is part of the response
    # Greedy decoding is deterministic.
    assert engine.generate(requests[:1])[0].text == out[0].text


def test_unknown_engine_is_refused(tiny_model_dir):
    with pytest.raises(ValueError, match="engine must be"), open_engine(str(tiny_model_dir), EngineSettings(engine="tgi")):
        pass
