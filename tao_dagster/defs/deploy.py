"""Deployment profiles, chosen by TAO_PROFILE so that moving to a cluster is configuration, not code.

`laptop` (default): the Dagster instance of dagster.yaml (SQLite under the project home) and runs in one process.
`prod`: the instance of deploy/dagster.prod.yaml (PostgreSQL, Kubernetes run launcher) and the k8s executor,
which runs each step in its own pod sized by the step's `dagster-k8s/config` tag: generation, training and
evaluation on GPU nodes, the rest on CPU nodes. Other executors ignore those tags, so they cost nothing locally.
"""

import dagster as dg

from tao_dagster.paths import PROJECT_ROOT
from tao_dagster.settings import gpus, profile

INSTANCE_YAML = {"laptop": PROJECT_ROOT / "dagster.yaml", "prod": PROJECT_ROOT / "deploy" / "dagster.prod.yaml"}
K8S_CONFIG_TAG = "dagster-k8s/config"


def cpu_step() -> dict:
    """Op tags of a step that needs no GPU: no GPU toleration, so it stays off tainted GPU nodes."""
    return {K8S_CONFIG_TAG: {"container_config": {"resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "16Gi"}}}}}


def gpu_step() -> dict:
    """Op tags of a step that runs a model: TAO_GPUS GPUs, the usual GPU-node taint tolerated, and a
    memory-backed /dev/shm, which vLLM's and NCCL's worker processes need beyond Kubernetes' 64 MB default."""
    n = gpus()
    return {
        K8S_CONFIG_TAG: {
            "container_config": {
                "resources": {
                    "requests": {"cpu": str(4 * n), "memory": f"{32 * n}Gi"},
                    "limits": {"nvidia.com/gpu": str(n), "memory": f"{48 * n}Gi"},
                },
                "volume_mounts": [{"name": "dshm", "mount_path": "/dev/shm"}],
            },
            "pod_spec_config": {
                "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                "volumes": [{"name": "dshm", "empty_dir": {"medium": "Memory"}}],
            },
        }
    }


def executor() -> dg.ExecutorDefinition | None:
    """The k8s executor (one pod per step) for `prod`; None keeps Dagster's default executor."""
    if profile() != "prod":
        return None
    from dagster_k8s import k8s_job_executor

    return k8s_job_executor
