"""Label-free scorers and their combination into one reward per candidate.

Every scorer sees only the prompt and the response (never a label) and returns a score in [0, 1]. Group
scorers (self-consistency, a pairwise judge) compare a prompt's candidates with each other and are left out
where a prompt has a single answer (evaluation). The kinds and their parameters: docs/scorers.md.
"""

from tao_dagster.rewards.base import Scored, Scorer, ScorerParams, extract_field, extract_json
from tao_dagster.rewards.combine import SCORERS, build_scorers, combine, score_frame
from tao_dagster.rewards.execution import extract_sql
from tao_dagster.rewards.judges import LlmJudgeScorer, parse_choice, parse_rating

__all__ = [
    "SCORERS",
    "LlmJudgeScorer",
    "Scored",
    "Scorer",
    "ScorerParams",
    "build_scorers",
    "combine",
    "extract_field",
    "extract_json",
    "extract_sql",
    "parse_choice",
    "parse_rating",
    "score_frame",
]
