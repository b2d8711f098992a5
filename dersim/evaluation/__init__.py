"""`dersim eval`: a trained run's policies on the test split beside the baselines.

baselines (fixed routes, random routing, the reference rows, replayed by `dersim.cache.routes`)
-> report (the policies' greedy episodes, the policy chosen on val by `dersim.trainer.selection`,
the judge's accuracy) -> stats (bootstrap intervals) -> outputs and plots (tables, JSON, figures);
commands holds `eval`.
"""
