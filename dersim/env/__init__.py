"""The DER environment replayed from a cache: a JAX env (`der_env`) and a plain Gymnasium twin
(`reference`) with exactly the same semantics, written down here once.

Episode. A question is drawn uniformly from the chosen split. The state is its root state (no
answer yet), t = 0 calls made, P_prev = 0, accumulated cost 0.

Actions. 0..N-1 call that expert; action N is STOP (the `learned` terminator). The JAX env always
has N + 1 actions, so that every terminator mode has the same shapes (a policy masks STOP where
its mode does not use it), and clips actions to 0..N; the Gymnasium env offers STOP only in
`learned` mode.

Calling expert a in state s (only while t < T_max; an episode always ends at T_max):
    s' = next_state[s, a],  P = score[s'],  C = cost[s, a],  t' = t + 1
    r  = P - alpha * C                          if t == 0
    r  = P + beta * (P - P_prev) - alpha * C    if t > 0
  and then, by terminator mode,
    oracle  (the paper; uses the reference, so not deployable):
            done = P >= p0 or t' == T_max;  r += gamma if P >= p0, else -gamma if t' == T_max
    none    (the paper's "w/o Term."; always T_max calls):
            done = t' == T_max;  at done r += gamma if P >= p0 else -gamma
    learned (deployable: the policy decides when to stop):
            done = t' == T_max;  at done r += gamma if P >= p0 else -gamma
STOP in state s (any mode): done; the episode's last answer is scored: P = score[s] (0 at the
root), r = +gamma if P >= p0 else -gamma; no call, no cost, t unchanged.

Scores are float32 and P >= p0 compares them with p0 rounded to float32.

At done the episode's outcome is reported (final score P, calls t, summed cost, return,
success = P >= p0) and the env auto-resets to a new question (the returned observation is the
new episode's first). Observation: the state's embedding, then a one-hot of t over 0..D (D =
the cache's depth, so T_max can vary without changing shapes), then optionally a one-hot of the
last action over 0..N (N = none yet).

Cost C per call, by cost mode: `params` (the paper: the expert's size in billions of
parameters), `tokens` (prompt + completion tokens of that call, in thousands), `latency` (that
call's seconds), `latency_norm` (that call's seconds over the expert's median latency, as a
public reproduction does; an expert whose median is 0, as in imports without latencies, costs
its raw latency) or `usd` (that call's US dollars). Defaults follow the authors' code:
alpha = 0.001, beta = 5, gamma = 2, p0 = 0.73 — but p0 was set for another BERTScore model and
must be recalibrated for the cache's metric (see `dersim cache info`). Routes never step past the
built depth: T_max > D is an error.
"""

TERMINATORS = ("oracle", "learned", "none")
COST_MODES = ("params", "tokens", "latency", "latency_norm", "usd")
