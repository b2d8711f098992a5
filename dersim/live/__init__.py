"""A trained router, live: `dersim route` (interactive, batch JSONL, `--check N`) and `dersim
serve`.

A policy trained on the cache routes new questions through the cache's own experts (same backends,
prompts, KTP and generation settings, from the manifest). The live observation is built as the
env builds it (`dersim.env.der_env.observation`): the embedding of the state text
"Q: <question>\\nA: <current answer>" by the cache's embedder (projected like the run's tables under
--embedding-dim), the one-hot of the calls made so far, and the last action when the run observes
it. Modules: `pool` (experts and embedder), `costs` (a call's cost in the run's unit),
`observation` (the projection), `policy` (a run's servable policies), `router` (the live loop),
`check` (live versus replay), `server` (the OpenAI-compatible app), `commands` (the CLI).
"""
