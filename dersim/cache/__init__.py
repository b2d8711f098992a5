"""The cache: Parquet tables of questions, states (scored, embedded) and transitions, plus a
manifest. A leaf of the pipeline: it imports nothing above it.

schema (table schemas, atomic writes, the manifest's hash) -> files (the manifest, Parquet columns
and the schemas a manifest implies, read with one-line errors) -> check (`read_checked`, the one
checked read every reader uses) -> reader (`open_cache`: all three tables) and verify (`dersim
cache verify`, the deep checks). writer writes plain Arrow tables; routes is the one route replay
(and its `Outcome`) that evaluation, routers, reproduce and `route --check` share; costs are the
cost modes, splits the seeded val split, answers how a task's answer is read from a text,
sampling the baselines of a sampled cache, merge the join of shard caches, info and commands
`dersim cache info|verify|merge`.
"""
