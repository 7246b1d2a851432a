"""The Dagster layer: assets, resources and jobs wired over the Dagster-free core in tao_dagster/."""
