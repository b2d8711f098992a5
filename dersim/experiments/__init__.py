"""`dersim reproduce`: the DER paper's tables (main table and ablations) from one command, on any
cache.

plan (which settings each table needs, grouped into as few training grids as shapes allow) ->
grids (trained with the vectorized trainer, resumably) -> outcomes (per question and seed, on the
test split) -> tables (means with bootstrap intervals, seed spread, deltas to each table's
reference row beside the paper's) -> outputs (tables.md, tables.tex, results.parquet, plots).
"""
