"""The DER paper's reported effects (`shared/paper_tables.md`, MixInstruct, 11 open 6-16B experts),
as text to stand beside ours. The experts and data differ, so compare signs and relative sizes."""

from __future__ import annotations

# The paper's DER: BERTScore 75.00 with 17B inference parameters per question, T_max = 4.
MAIN = {
    "single": "best single open LLM 74.68 (-0.32) at 12B; Vicuna 69.60 (-5.40) at 13B",
    "all-reference": "PairRanker (all experts, a ranker picks) 73.03 (-1.97) at 117B (6.9x)",
    "voting": "sampling-voting 70.12 (-4.88) at 234B (13.8x)",
    "random": "random routing 72.88 (-2.12)",
}
T_MAX = (
    "T_max 3: 74.97 at 15B; 4: 75.00 at 17B; 5: 74.94 at 20B; w/o terminator (T_max 4): 73.32 at "
    "28B"
)
NO_TERMINATOR = "-1.68 BERTScore, +65% params (the terminator cuts 39%)"
KTP = "without the KTP: BARTScore -3.29 vs -3.14 (4.6% worse; no BERTScore given)"
RANDOM = "-2.12 BERTScore (72.88 vs 75.00)"
PAIRS = "-0.20 BERTScore (74.80 vs 75.00) at 2.9x params (49B vs 17B)"
