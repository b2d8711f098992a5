"""Breadth-first expansion over distinct answers: dedup, depths, failures, root vs empty answer."""

from __future__ import annotations

from dersim.builder.build import full_tree_calls
from dersim.builder.expand import Call, expand, normalise_answer
from dersim.builder.journal import CallRecord, call_key
from dersim.builder.sources.bigbench import read_bigbench
from dersim.builder.sources.question import Question
from dersim.cache.schema import STATUS_FAILED, STATUS_OK

from conftest import STRATEGYQA

QUESTION = Question(
    "q1", "Is the sky blue?", "Yes. Rayleigh scattering.", ("Yes. Rayleigh scattering.",), "yes"
)


def scripted(answers: dict[tuple, str | None]):
    """A fake call batch: answer by (previous answer, expert), or by (previous answer, expert,
    sample) for sampled experts; None means the call failed."""
    seen: list[tuple[int, str | None, int]] = []

    def run(level: int, calls: list[Call]) -> list[CallRecord]:
        records = []
        for question, previous, expert, sample in calls:
            seen.append((level, previous, expert))
            text = answers.get((previous, expert, sample), answers.get((previous, expert)))
            status = STATUS_OK if text is not None else STATUS_FAILED
            records.append(
                CallRecord(
                    "k",
                    question.question_id,
                    f"e{expert}",
                    previous,
                    text,
                    1,
                    1,
                    0.0,
                    status,
                    "" if text is not None else "boom",
                    1,
                )
            )
        return records

    return run, seen


def test_normalise_collapses_whitespace_only() -> None:
    assert normalise_answer("  Yes.\n  Because\tblue ") == "Yes. Because blue"
    assert normalise_answer("Yes.") != normalise_answer("yes.")


def test_duplicates_merge_and_states_expand_once_at_their_first_depth() -> None:
    run, seen = scripted(
        {
            (None, 0): "Yes.",
            (None, 1): " Yes. ",  # same state after normalisation
            ("Yes.", 0): "Yes. Blue light scatters.",
            ("Yes.", 1): "Yes.",  # a self-loop
            ("Yes. Blue light scatters.", 0): "done",
            ("Yes. Blue light scatters.", 1): "Yes.",
        }
    )
    (graph,) = expand([QUESTION], samples=[1, 1], depth=3, run_calls=run)
    assert graph.answers == ["", "Yes.", "Yes. Blue light scatters.", "done"]
    assert graph.depths == [0, 1, 2, 3]
    # 2 calls at the root, 2 from "Yes.", 2 from depth 2; "done" is at depth D and is not expanded.
    edges = [(s, e, t) for s, e, t, *_ in graph.edges]
    assert edges == [(0, 0, 1), (0, 1, 1), (1, 0, 2), (1, 1, 1), (2, 0, 3), (2, 1, 1)]
    assert len(seen) == 6 < full_tree_calls(1, 2, 3) == 14
    assert seen[0] == (0, None, 0)  # the root call carries no previous answer (no KTP)


def test_empty_answer_is_a_state_distinct_from_the_root() -> None:
    run, _ = scripted({(None, 0): "", ("", 0): "Yes."})
    (graph,) = expand([QUESTION], samples=[1], depth=2, run_calls=run)
    assert graph.answers == ["", "", "Yes."]
    assert graph.previous_answer(0) is None and graph.previous_answer(1) == ""


def test_failed_calls_leave_no_state_and_no_expansion() -> None:
    run, seen = scripted(
        {(None, 0): None, (None, 1): "No."} | {("No.", e): "No." for e in range(2)}
    )
    (graph,) = expand([QUESTION], samples=[1, 1], depth=2, run_calls=run)
    assert [(s, e, t) for s, e, t, *_ in graph.edges] == [
        (0, 0, -1),
        (0, 1, 1),
        (1, 0, 1),
        (1, 1, 1),
    ]
    assert len(seen) == 4


def test_call_keys_distinguish_root_empty_answer_expert_and_question() -> None:
    q = read_bigbench(STRATEGYQA, "strategyqa")[0]
    keys = {
        call_key("f1", q.question_id, q.text, None),
        call_key("f1", q.question_id, q.text, ""),
        call_key("f2", q.question_id, q.text, None),
        call_key("f1", "other", q.text, None),
    }
    assert len(keys) == 4
    assert call_key("f1", q.question_id, q.text, "Yes.") == call_key(
        "f1", q.question_id, q.text, "Yes."
    )


def test_sampled_experts_call_k_times_and_equal_samples_share_a_child() -> None:
    """Expert 0 samples 3 answers per state, expert 1 answers greedily: 4 calls per state, one
    edge each with its sample index; two equal samples reach one child, which is expanded once."""
    run, seen = scripted(
        {
            (None, 0, 0): "Yes.",
            (None, 0, 1): "No.",
            (None, 0, 2): "Yes.",
            (None, 1): "Yes.",
            ("Yes.", 0): "Yes.",
            ("Yes.", 1): "Yes.",
            ("No.", 0): "Yes.",
            ("No.", 1): "No.",
        }
    )
    (graph,) = expand([QUESTION], samples=[3, 1], depth=2, run_calls=run)
    assert graph.answers == ["", "Yes.", "No."]
    root = [(e.expert, e.sample, e.next) for e in graph.edges if e.state == 0]
    assert root == [(0, 0, 1), (0, 1, 2), (0, 2, 1), (1, 0, 1)]
    assert len(seen) == 4 * 3 and len(graph.edges) == 12  # the root and its two children
    assert full_tree_calls(1, 4, 2) == 4 + 16
