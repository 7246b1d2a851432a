"""The stages of a TAO round as plain functions over a Warehouse: what the Dagster assets call, and what a
notebook calls without Dagster (see round.py). Each returns a summary of plain values for the step's metadata."""
