"""The production profile: Dagster's storage in a real PostgreSQL with logs from a real S3 endpoint, and the
Kubernetes configuration (run launcher, step pods, Helm values, manifests) validated by loading it with
dagster-k8s and the Kubernetes client's models. Nothing here reaches a cluster: there is none on this machine."""

import json
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
import yaml
from dagster._config import process_config
from dagster_aws.s3 import S3Resource
from dagster_k8s import K8sRunLauncher, k8s_job_executor
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config
from dagster_k8s.models import k8s_model_from_dict, k8s_snake_case_dict
from kubernetes.client import V1ConfigMap, V1PersistentVolumeClaim, V1Volume, V1VolumeMount

from tao_dagster import definitions
from tao_dagster.cli import use_project_instance
from tao_dagster.defs.deploy import INSTANCE_YAML, executor, gpu_step
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.prompts.assets import raw_prompts
from tao_dagster.defs.resources import DomainResource, LogSourceResource, PolicyResource, WarehouseResource, default_resources
from tao_dagster.paths import PROJECT_ROOT

from .conftest import BANKING, MODEL_CACHE

DEPLOY = PROJECT_ROOT / "deploy"
GPU_STEPS = {"candidate_responses", "tuned_checkpoint", "eval_report", "promotion_gate"}
CPU_STEPS = {"raw_prompts", "reward_scores"}


@pytest.mark.servers
def test_prod_instance_keeps_a_partitioned_run_in_postgres(postgres, s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TAO_PROFILE", "prod")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    use_project_instance()
    assert (tmp_path / "dagster" / "dagster.yaml").readlink() == INSTANCE_YAML["prod"]

    s3 = S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.get_client().create_bucket(Bucket="prod-logs")
    s3.get_client().upload_file(str(BANKING / "logs" / "2026-11-02.csv"), "prod-logs", "support/2026-11-02.csv")
    resources = {
        "logs": LogSourceResource(location="s3://prod-logs/support", s3=s3),
        "domain": DomainResource(domain_file=str(BANKING / "domain.yaml")),
        "policy": PolicyResource(cache_dir=str(MODEL_CACHE)),
        "warehouse": WarehouseResource(path=str(tmp_path / "warehouse.duckdb")),
    }
    with dg.DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PostgresEventLogStorage"
        ref = instance.get_ref()
        assert ref.run_launcher_data.class_name == "K8sRunLauncher"  # configured; starting it needs a cluster
        assert postgres["DAGSTER_PG_PASSWORD"] not in repr(ref), "the instance ref handed to subprocesses names the variable only"
        assert instance.run_monitoring_enabled and instance.run_retries_max_retries == 1
        instance.add_dynamic_partitions(log_files.name, ["2026-11-02.csv"])
        result = dg.materialize([raw_prompts], instance=instance, resources=resources, partition_key="2026-11-02.csv")
        assert result.success
        accepted = result.asset_materializations_for_node("raw_prompts")[0].metadata["accepted"].value
        assert accepted == 100

    # A new instance, a new connection: the run, the partition and its materialization are in PostgreSQL.
    with dg.DagsterInstance.get() as again:
        assert again.get_materialized_partitions(raw_prompts.key) == {"2026-11-02.csv"}
        assert [r.status for r in again.get_runs()] == [dg.DagsterRunStatus.SUCCESS]
    connection = psycopg2.connect(
        host="127.0.0.1",
        port=postgres["DAGSTER_PG_PORT"],
        dbname=postgres["DAGSTER_PG_DB"],
        user=postgres["DAGSTER_PG_USERNAME"],
        password=postgres["DAGSTER_PG_PASSWORD"],
    )
    with connection, connection.cursor() as cursor:
        cursor.execute("select partition from event_logs where dagster_event_type = 'ASSET_MATERIALIZATION'")
        assert cursor.fetchall() == [("2026-11-02.csv",)]
        cursor.execute("select partition from dynamic_partitions where partitions_def_name = %s", [log_files.name])
        assert cursor.fetchall() == [("2026-11-02.csv",)]
        cursor.execute("select count(*) from event_logs where event like %s", [f"%{postgres['DAGSTER_PG_PASSWORD']}%"])
        assert cursor.fetchone() == (0,)
    connection.close()

    monkeypatch.delenv("TAO_PROFILE")
    use_project_instance()
    assert (tmp_path / "dagster" / "dagster.yaml").readlink() == INSTANCE_YAML["laptop"], "back to the laptop profile"


def k8s_model(model_class, manifest: dict):
    """A Kubernetes model from a manifest's camelCase dict, failing on any key the API does not have."""
    return k8s_model_from_dict(model_class, k8s_snake_case_dict(model_class, manifest))


def fake_kubeconfig(path: Path) -> str:
    """A kubeconfig naming an unreachable cluster: enough for the client to load, nothing is contacted."""
    cluster = {"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}
    context = {"name": "none", "context": {"cluster": "none", "user": "none"}}
    config = {"clusters": [cluster], "users": [{"name": "none", "user": {"token": "x"}}], "contexts": [context], "current-context": "none"}
    path.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", **config}))
    return str(path)


def step_pod(launcher: K8sRunLauncher, op_tags: dict):
    """The pod spec of a step's Job, merged as dagster-k8s's k8s_job_executor merges it: run launcher first,
    then the op's dagster-k8s/config tag."""
    context = K8sContainerContext.create_for_run(dg.DagsterRun(job_name="tuning_round"), launcher, include_run_tags=False)
    context = context.merge(K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(op_tags)))
    job = construct_dagster_k8s_job(
        context.get_k8s_job_config("registry.example.com/tao-dagster:0.1.0", launcher),
        ["dagster", "api", "execute_step"],
        "dagster-step-test",
        user_defined_k8s_config=context.run_k8s_config,
    )
    return job.spec.template.spec


def test_run_launcher_and_step_pods_put_models_on_gpu_nodes(tmp_path, monkeypatch):
    monkeypatch.setenv("TAO_K8S_NAMESPACE", "tao")
    config = yaml.safe_load(INSTANCE_YAML["prod"].read_text())["run_launcher"]
    assert (config["module"], config["class"]) == ("dagster_k8s", "K8sRunLauncher")
    processed = process_config(K8sRunLauncher.config_type(), config["config"])
    assert processed.success, processed.errors
    launcher = K8sRunLauncher(**{**processed.value, "load_incluster_config": False, "kubeconfig_file": fake_kubeconfig(tmp_path / "kc")})
    assert launcher.job_namespace == "tao"

    defs = definitions.defs()
    graph = defs.resolve_asset_graph()
    steps = {key.to_user_string(): graph.get(key).assets_def.op.tags for key in graph.get_all_asset_keys()}
    steps |= {key.name: check.node_def.tags for check in defs.asset_checks for key in check.check_keys}
    assert set(steps) == GPU_STEPS | CPU_STEPS
    for name, tags in steps.items():
        pod = step_pod(launcher, tags)
        (container,) = pod.containers
        assert container.image == "registry.example.com/tao-dagster:0.1.0"
        assert {(m.name, m.mount_path) for m in container.volume_mounts} >= {("tao-home", "/opt/tao_home")}, name
        assert any(v.persistent_volume_claim and v.persistent_volume_claim.claim_name == "tao-home" for v in pod.volumes), name
        assert {"name": "TAO_HOME", "value": "/opt/tao_home"} in [{"name": e.name, "value": e.value} for e in container.env], name
        assert [s.secret_ref.name for s in container.env_from if s.secret_ref] == ["tao-secrets"], name
        limits = container.resources.limits
        if name in GPU_STEPS:
            assert limits["nvidia.com/gpu"] == "1", name
            assert [t.key for t in pod.tolerations] == ["nvidia.com/gpu"], name
            assert ("dshm", "/dev/shm") in {(m.name, m.mount_path) for m in container.volume_mounts}, name
        else:
            assert "nvidia.com/gpu" not in limits and not pod.tolerations, name

    monkeypatch.setenv("TAO_GPUS", "4")
    tags = {k: json.dumps(v) for k, v in gpu_step().items()}
    assert step_pod(launcher, tags).containers[0].resources.limits["nvidia.com/gpu"] == "4"


def test_executor_follows_the_profile(monkeypatch):
    assert executor() is None, "the laptop keeps Dagster's default executor"
    monkeypatch.setenv("TAO_PROFILE", "prod")
    assert executor() is k8s_job_executor
    monkeypatch.setenv("TAO_PROFILE", "cluster")
    with pytest.raises(ValueError, match="TAO_PROFILE: 'cluster' is not a profile"):
        executor()


def test_prod_settings_configmap_builds_the_resources(monkeypatch):
    """The ConfigMap's settings, as a pod's environment, pass the load-time checks and reach the resources;
    a production profile without its S3 artifact store fails, naming the variable."""
    settings = yaml.safe_load((DEPLOY / "k8s" / "tao-settings.yaml").read_text())
    assert settings["kind"] == "ConfigMap" and k8s_model(V1ConfigMap, settings).data == settings["data"]
    for name, value in settings["data"].items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("TAO_DOMAIN", str(BANKING / "domain.yaml"))  # the ConfigMap's path lies on the cluster's volume
    monkeypatch.setenv("TAO_GPUS", "2")
    bound = default_resources()
    assert isinstance(bound["artifacts"].location, dg.EnvVar), "a setting from the environment is bound to its variable"
    with dg.build_resources(bound) as resolved:  # as a run resolves them
        resources = dict(resolved._asdict())
        policy = resources["policy"]
        assert (policy.tensor_parallel_size, policy.train_processes) == (2, 2)
        assert (policy.gpu_memory_utilization, policy.block_size, policy.engine) == (0.9, 0, "vllm")
        assert resources["artifacts"].location == "s3://acme-tao/support/"
        assert resources["mlflow"].tracking_uri.startswith("http://") and resources["mlflow"].artifact_location == ""
        assert not any("SECRET" in name or "PASSWORD" in name or "KEY" in name for name in settings["data"])

    monkeypatch.delenv("TAO_ARTIFACTS")
    with pytest.raises(ValueError, match="TAO_PROFILE=prod: set TAO_ARTIFACTS"):
        default_resources()


def leaves(tree: dict, prefix: str = "") -> set[str]:
    """Dotted paths of a nested mapping's values that are not mappings (lists are not entered)."""
    paths = set()
    for key, value in tree.items():
        paths |= leaves(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key}
    return paths


# Keys of the official chart's values (helm/dagster/values.yaml and its schema, Dagster 1.13) that the file uses.
CHART_KEYS = {
    "global.serviceAccountName",
    "global.postgresqlSecretName",
    "dagster-user-deployments.enabled",
    "dagster-user-deployments.deployments",
    "runLauncher.type",
    "runLauncher.config.k8sRunLauncher.envConfigMaps",
    "runLauncher.config.k8sRunLauncher.envSecrets",
    "runLauncher.config.k8sRunLauncher.envVars",
    "runLauncher.config.k8sRunLauncher.volumes",
    "runLauncher.config.k8sRunLauncher.volumeMounts",
    "runLauncher.config.k8sRunLauncher.resources.requests.cpu",  # a Kubernetes ResourceRequirements
    "runLauncher.config.k8sRunLauncher.resources.requests.memory",
    "runLauncher.config.k8sRunLauncher.resources.limits.memory",
    "postgresql.enabled",
    "postgresql.postgresqlHost",
    "postgresql.postgresqlUsername",
    "postgresql.postgresqlDatabase",
    "postgresql.postgresqlScheme",
    "postgresql.service.port",
    "generatePostgresqlPasswordSecret",
    "dagsterDaemon.runCoordinator.enabled",
    "dagsterDaemon.runCoordinator.type",
    "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.maxConcurrentRuns",
    "dagsterDaemon.runMonitoring.enabled",
    "dagsterDaemon.runMonitoring.startTimeoutSeconds",
    "dagsterDaemon.runRetries.enabled",
    "dagsterDaemon.runRetries.maxRetries",
    "telemetry.enabled",
}
USER_DEPLOYMENT_KEYS = {"name", "image", "dagsterApiGrpcArgs", "port", "env", "envConfigMaps", "envSecrets"}
USER_DEPLOYMENT_KEYS |= {"volumes", "volumeMounts", "resources"}


def test_helm_values_match_the_chart_and_the_prod_instance():
    """helm is not installed here: the values are checked against the chart's documented keys, the Kubernetes
    models, and deploy/dagster.prod.yaml, which renders the same instance."""
    values = yaml.safe_load((DEPLOY / "helm" / "values.yaml").read_text())
    assert leaves(values) == CHART_KEYS
    assert "postgresqlPassword" not in json.dumps(values), "the password comes from the secret only"

    (code,) = values["dagster-user-deployments"]["deployments"]
    assert set(code) == USER_DEPLOYMENT_KEYS
    assert code["dagsterApiGrpcArgs"] == ["-m", "tao_dagster.definitions"]
    assert [k8s_model(V1Volume, v).persistent_volume_claim.claim_name for v in code["volumes"]] == ["tao-home"]
    assert [k8s_model(V1VolumeMount, m).mount_path for m in code["volumeMounts"]] == ["/opt/tao_home"]

    instance = yaml.safe_load(INSTANCE_YAML["prod"].read_text())
    k8s = values["runLauncher"]["config"]["k8sRunLauncher"]
    launcher = instance["run_launcher"]["config"]
    assert values["runLauncher"]["type"] == instance["run_launcher"]["class"]
    assert [m["name"] for m in k8s["envConfigMaps"]] == launcher["env_config_maps"]
    assert [s["name"] for s in k8s["envSecrets"]] == launcher["env_secrets"]
    assert k8s["envVars"] == launcher["env_vars"]
    assert (k8s["volumes"], k8s["volumeMounts"]) == (launcher["volumes"], launcher["volume_mounts"])
    assert values["global"]["postgresqlSecretName"] == launcher["postgres_password_secret"]
    assert values["postgresql"]["postgresqlScheme"] == instance["storage"]["postgres"]["postgres_db"]["scheme"]
    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["maxConcurrentRuns"] == instance["run_coordinator"]["config"]["max_concurrent_runs"]
    monitoring, retries = values["dagsterDaemon"]["runMonitoring"], values["dagsterDaemon"]["runRetries"]
    assert (monitoring["enabled"], monitoring["startTimeoutSeconds"]) == (True, instance["run_monitoring"]["start_timeout_seconds"])
    assert (retries["enabled"], retries["maxRetries"]) == (True, instance["run_retries"]["max_retries"])

    pvc = yaml.safe_load((DEPLOY / "k8s" / "tao-home-pvc.yaml").read_text())
    assert k8s_model(V1PersistentVolumeClaim, pvc).spec.access_modes == ["ReadWriteMany"]
