"""What the trainer and the backend must agree on, in one torch-free package that imports no other cliplab
package: the run config and presets (config, presets), the event schema (events), the run-directory layout
and its checkpoint pointers (run_dir), prepared datasets and data sources (datasets, table, sources), and
text rules shared by both sides (text). import-linter checks these boundaries (pyproject.toml)."""
