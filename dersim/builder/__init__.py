"""The one-time cache builder: questions -> expert calls (breadth-first over distinct answers) ->
scores and embeddings -> Parquet cache.

sources (questions) and prompts -> expand (the breadth-first walk over distinct answers) with calls
(journal look-up, retries, bounded parallelism) through backends, journaled -> scoring and
embedding (with its store) -> tables (the graphs as the cache's tables) -> build (the whole run,
written by `dersim.cache.writer`); commands holds `build-cache` and `models`.
"""
