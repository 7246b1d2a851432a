"""The Dagster UI in a real browser: `dagster dev` on 127.0.0.1 over a project home where the tiny model
materialized the whole graph, opened in Debian's headless Chromium driven by Playwright. The screenshots are
kept in tests/artifacts/ (not committed)."""

from pathlib import Path

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from tao_dagster.cli import use_project_instance
from tao_dagster.defs.flywheel.jobs import prompt_assets
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.resources import ArtifactStoreResource

from .conftest import run_round, tiny_resources, write_demo_log
from .support.devserver import dagster_dev

CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags Chromium keeps calling home, which this machine's closed network refuses.
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking"]
FLAGS += ["--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).parent / "artifacts"
ASSETS = ["candidate_responses", "eval_report", "raw_prompts", "reward_scores", "tuned_checkpoint"]
# How long the page may take to show what the server holds. Every wait ends as soon as the page shows it, so this is a
# ceiling for a slow or busy machine, not a pause; Playwright's expect() would give up after 5 s.
PAGE_STATE_MS = 180_000

pytestmark = [
    pytest.mark.browser,
    pytest.mark.servers,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian's chromium is not installed"),
]


@pytest.fixture
def demo_home(tmp_path, tiny_model_dir, learnable_domain_file, s3_endpoint, monkeypatch) -> dict:
    """A project home where one log file went through the whole graph (one short DPO round, no gate), its
    checkpoint and report published to S3; returns the environment `tao-dagster dev` needs to show it."""
    home, logs = tmp_path / "home", tmp_path / "logs"
    logs.mkdir()
    write_demo_log(logs / "day1.csv", 0, 20)
    monkeypatch.setenv("TAO_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    use_project_instance()
    s3 = S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1")
    s3.get_client().create_bucket(Bucket="tao")
    artifacts = ArtifactStoreResource(location="s3://tao/demo", s3=s3)
    resources = tiny_resources(home, logs, tiny_model_dir, learnable_domain_file, artifacts)
    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(log_files.name, ["day1.csv"])
        assert dg.materialize(prompt_assets, instance=instance, resources=resources, partition_key="day1.csv").success
        tuned = run_round(instance, resources, gate=False, batch_size=8, epochs=1)
        assert tuned.success
    ckpt = tuned.asset_materializations_for_node("tuned_checkpoint")[0].metadata["checkpoint_id"].value
    report = tuned.asset_materializations_for_node("eval_report")[0].metadata
    assert report["published"].value == f"s3://tao/demo/reports/{ckpt}"
    stored = {o["Key"] for o in s3.get_client().list_objects_v2(Bucket="tao")["Contents"]}
    assert {f"demo/checkpoints/{ckpt}/config.json", f"demo/reports/{ckpt}/report.png", f"demo/reports/{ckpt}/report.md"} <= stored
    return {
        "TAO_HOME": str(home),
        "DAGSTER_HOME": str(home / "dagster"),
        "TAO_DOMAIN": str(learnable_domain_file),
        "TAO_LOGS": str(logs),
        "TAO_BASE_MODEL": str(tiny_model_dir),
        "TAO_ENGINE": "transformers",
        "TAO_ROUND_MIN_NEW_PROMPTS": "100000",  # the schedule starts no round while the browser looks
    }


def test_lineage_graph_and_eval_report_in_chromium(demo_home, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with dagster_dev(demo_home, tmp_path / "dagster-dev.log") as (url, _), sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 2200, "height": 900})
            page.set_default_timeout(PAGE_STATE_MS)
            # A fresh browser profile gets Dagster's one-time "Join the community" dialog: skip it whenever it shows.
            page.add_locator_handler(page.get_by_role("button", name="Skip"), lambda skip: skip.click())

            page.goto(f"{url}/asset-groups")
            nodes = page.locator("foreignObject", has=page.locator("[class*=assetName]"))
            expect(nodes).to_have_count(len(ASSETS), timeout=PAGE_STATE_MS)
            names = nodes.locator("[class*=assetName]")
            assert sorted(names.all_inner_texts()) == ASSETS
            # Each node fetches its status after the graph is drawn, showing "Loading..." until it arrives: wait for
            # the status itself, then read it.
            expect(nodes.filter(has_text="Loading")).to_have_count(0, timeout=PAGE_STATE_MS)
            for name in ("tuned_checkpoint", "eval_report"):
                expect(nodes.filter(has_text=name)).to_contain_text("Materialized", timeout=PAGE_STATE_MS)
            for name in ("raw_prompts", "candidate_responses", "reward_scores"):
                expect(nodes.filter(has_text=name)).to_contain_text("100% filled", timeout=PAGE_STATE_MS)
            page.screenshot(path=ARTIFACTS / "lineage.png")

            page.goto(f"{url}/assets/eval_report")
            page.get_by_text("[Show Markdown]").first.click()
            dialog = page.get_by_role("dialog")
            expect(dialog).to_contain_text("TAO eval report", timeout=PAGE_STATE_MS)
            expect(dialog.locator("table").first).to_contain_text("mean reward", timeout=PAGE_STATE_MS)
            plot = dialog.locator("img[src^='data:image/png']")
            expect(plot).to_have_count(1, timeout=PAGE_STATE_MS)
            plot.evaluate("img => img.complete || new Promise(done => img.addEventListener('load', done))")  # decoded
            assert plot.evaluate("img => img.naturalWidth") > 300, "the plot is decoded and drawn"
            page.screenshot(path=ARTIFACTS / "eval_report.png")
        finally:
            browser.close()
    print(f"screenshots in {ARTIFACTS}")
