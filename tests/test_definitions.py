import dagster as dg

from tao_dagster import definitions

defs = definitions.defs()  # the code location, as `dg dev` and `dagster dev` load it


def test_definitions_load_with_the_five_assets_in_lineage():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert keys == {"raw_prompts", "candidate_responses", "reward_scores", "tuned_checkpoint", "eval_report"}
    parents = {k.to_user_string(): {p.to_user_string() for p in graph.get(k).parent_keys} for k in graph.get_all_asset_keys()}
    assert parents["candidate_responses"] == {"raw_prompts"}
    assert parents["reward_scores"] == {"candidate_responses"}
    assert parents["tuned_checkpoint"] == {"reward_scores"}
    assert parents["eval_report"] == {"tuned_checkpoint", "raw_prompts"}
    for key in ("raw_prompts", "candidate_responses", "reward_scores"):
        assert isinstance(graph.get(dg.AssetKey(key)).partitions_def, dg.DynamicPartitionsDefinition)
    assert defs.resolve_job_def("score_partitions") and defs.resolve_job_def("tuning_round")
    checks = {c.name for c in graph.asset_check_keys}
    assert checks == {
        "counts_reconcile",
        "no_reward_hacking_alarms",
        "promotion_gate",
        "tuned_beats_base",
        "outside_check_beats_majority",
        "serving_cost_not_higher",
        "reports_a_promoted_checkpoint",
    }
    assert defs.resolve_sensor_def("new_log_files").default_status == dg.DefaultSensorStatus.RUNNING
    assert defs.resolve_schedule_def("flywheel_round").default_status == dg.DefaultScheduleStatus.RUNNING


def test_every_asset_has_a_description_group_and_kinds():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        assert node.description and node.group_name == "tao" and node.kinds, key
