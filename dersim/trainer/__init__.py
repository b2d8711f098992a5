"""`dersim train`: routing policies trained on a cache's train questions, chosen on its val
questions.

algorithms (the registry of a grid's algorithms and their defaults) -> ppo (the paper's algorithm,
from sampled episodes), exact_pg (gradient ascent on the exact return) and fqi (fitted Q-iteration)
-> policy (how every algorithm's policy acts: one `PolicyParams` shape for all) -> run (the grid
driver: groups, chunks, the typed `TrainState`, checkpoints, curves) and greedy (episodes of
every policy at once); selection is the one rule for choosing on val (used by the trainer,
evaluation, reproduce and the live router), checkpoint the hashed msgpack checkpoints, grid parses
`--grid`, network is the actor-critic, stepwise the slow Gymnasium path.
"""
