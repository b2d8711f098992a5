"""The one-time cache builder: questions -> expert calls (breadth-first over distinct answers) ->
scores and embeddings -> Parquet cache.

sources (questions, a shard of them) and prompts -> expand (the breadth-first walk over distinct
answers, k calls per state for a sampled expert) with calls (journal look-up, retries, a bounded
window) through backends (replicas for HTTP experts), journaled -> scoring and embedding (both
batched, with the store) -> tables (the graphs as the cache's tables) -> build (the whole run,
written by `dersim.cache.writer`); fleet is a loopback fleet of synthetic OpenAI servers for
tests and benchmarks; commands holds `build-cache` and `models`.
"""
