"""The promotion decision: a tuned checkpoint becomes the champion only if it beats the base and the champion."""

import logging

from tao_dagster.diagnostics import THRESHOLDS, Alarm, answer_alarms
from tao_dagster.domain import DomainSettings
from tao_dagster.errors import StageError
from tao_dagster.evaluation import compare, promotion_decision
from tao_dagster.pipeline.diagnosis import why_no_lift
from tao_dagster.pipeline.heldout import answer_rewards, heldout_answers, heldout_prompts, on_common_prompts, pointwise_scorers
from tao_dagster.policies import Policy, PolicySettings, base_policy, champion_policy
from tao_dagster.tracking import Tracking
from tao_dagster.warehouse import Warehouse

logger = logging.getLogger(__name__)


def blocking_alarms(alarms: list[Alarm], diagnostics: dict) -> list[Alarm]:
    """The alarms on the candidate's gate answers that the domain lets block promotion (`diagnostics:
    block_promotion_on: [one_value, ...]`); none by default, since an alarm asks a human to look."""
    names = diagnostics.get("block_promotion_on", [])
    unknown = sorted(set(names) - set(THRESHOLDS))
    if unknown:
        raise StageError(f"diagnostics.block_promotion_on: {unknown} are not alarms; use some of {sorted(THRESHOLDS)}")
    return [a for a in alarms if a.name in names]


def decide_promotion(
    db: Warehouse, domain: DomainSettings, settings: PolicySettings, tracking: Tracking, candidate: Policy, log=logger
) -> tuple[bool, dict]:
    """Answer the held-out prompts with the candidate, the base and the champion; move the champion alias to the
    candidate only if its mean reward beats each with the 95% CI of the paired difference above zero.
    Returns (promoted, summary); the decision and its reason are also tagged on the candidate's model version."""
    champion = champion_policy(db, tracking)
    if champion and champion.checkpoint_id == candidate.checkpoint_id:
        return True, {"decision": "already the champion", "champion": candidate.version}
    spec = domain.load()
    scorers = pointwise_scorers(spec.build_scorers())
    prompts = heldout_prompts(db, domain, "gate")
    references = {"base": base_policy(settings), **({"champion": champion} if champion else {})}
    models = {**references, "candidate": candidate}
    answered = on_common_prompts(*(heldout_answers(db, spec, settings, p, prompts) for p in models.values()))
    answers = dict(zip(models, answered))
    rewards = {name: answer_rewards(frame, scorers) for name, frame in answers.items()}
    comparisons = {name: compare(rewards[name], rewards["candidate"]) for name in references}
    promote, why = promotion_decision(comparisons)
    field, diagnostics = spec.evaluation.get("answer_field"), spec.diagnostics
    alarms = answer_alarms(answers["base"], answers["candidate"], comparisons["base"]["diff"], field, diagnostics)
    blocked = blocking_alarms(alarms, diagnostics)
    if promote and blocked:
        promote, why = False, why + "; blocked by " + "; ".join(f"the {a.name} alarm: {a.message}" for a in blocked)
    previous = champion.version if champion else references["base"].version
    tracking.tag_version(candidate.model_version, {"promotion_gate": "passed" if promote else "failed", "promotion_gate_reason": why})
    if promote:
        tracking.promote(candidate.model_version)
    log.info(f"promotion gate for {candidate.version}: {'promoted' if promote else 'kept ' + previous}: {why}")
    diagnosis = {} if promote else why_no_lift(db, spec, db.checkpoint(candidate.checkpoint_id))
    return promote, {
        "decision": f"promoted {candidate.version} over {previous}" if promote else f"not promoted: {previous} stays champion",
        "reason": why,
        "champion": candidate.version if promote else previous,
        "registered_model_version": f"{tracking.registered_model} v{candidate.model_version}",
        **{f"diff_vs_{name}": c["diff"] for name, c in comparisons.items()},
        **{f"diff_vs_{name}_ci_low": c["diff_ci_low"] for name, c in comparisons.items()},
        "heldout_prompts": prompts.height,  # of the gate part
        **({"why_not": diagnosis["advice"], "training": {k: v for k, v in diagnosis.items() if k != "advice"}} if diagnosis else {}),
    }
