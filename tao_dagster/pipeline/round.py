"""A whole round without Dagster, for a notebook or a script: the same stage functions the assets call.

from tao_dagster.pipeline.round import run_round
report = run_round(Warehouse("tao.duckdb"), DomainSettings(domain_file="assets/banking/domain.yaml"),
                   PolicySettings(cache_dir=".cache"), Tracking(tracking_uri="sqlite:///mlflow.db", registered_model="tao-banking"),
                   [Path("assets/banking/logs/2026-11-02.csv")])
"""

import logging
from pathlib import Path

from tao_dagster.context_window import window_check
from tao_dagster.domain import DomainSettings
from tao_dagster.pipeline.candidates import generate_candidates
from tao_dagster.pipeline.promotion import decide_promotion
from tao_dagster.pipeline.prompts import ingest_partition, reconciles
from tao_dagster.pipeline.report import evaluate
from tao_dagster.pipeline.scores import score_partitions
from tao_dagster.pipeline.tuning import tune
from tao_dagster.policies import PolicySettings, current_policy
from tao_dagster.storage import ArtifactStore, partition_key
from tao_dagster.tracking import Tracking
from tao_dagster.training import TrainSettings
from tao_dagster.warehouse import Warehouse

logger = logging.getLogger(__name__)


def run_round(
    db: Warehouse,
    domain: DomainSettings,
    policy: PolicySettings,
    tracking: Tracking,
    log_files: list[Path],
    settings: TrainSettings | None = None,
    artifacts: ArtifactStore | None = None,
    log=logger,
) -> dict:
    """Ingest each file as a partition, generate and score candidates with the current policy, train, gate, and
    report. Returns the report, or the gate's summary (with `promoted: False`) when the checkpoint was not promoted."""
    keys, window = [partition_key(path.name) for path in log_files], window_check(domain.load(), policy)
    for key, path in zip(keys, log_files):
        counts = ingest_partition(db, key, path, domain, window, log)
        if not reconciles(counts):
            raise RuntimeError(f"{path}: rows read do not reconcile with the warehouse: {counts}")
    generate_candidates(db, domain, policy, current_policy(db, policy, tracking), keys, log)
    score_partitions(db, domain, keys, log)
    tuned, _ = tune(db, domain, policy, tracking, artifacts or ArtifactStore(), settings or TrainSettings(), log)
    promoted, gate = decide_promotion(db, domain, policy, tracking, tuned, log)
    if not promoted:
        return {"promoted": False, **gate}
    report, _, _ = evaluate(db, domain, policy, tracking, artifacts or ArtifactStore(), tuned)
    return {"promoted": True, **report}
