"""The evaluation's plots: which generations the guard-trace plot shows."""

from __future__ import annotations

from eval_helpers import BASE, GUARDED, guard_info, rec

from localguard.eval.plots import trace_records


def test_trace_records_prefer_interventions_and_spread_targets():
    plain = [rec(BASE, "direct", "direct", i, False, guard=guard_info(False)) for i in range(3)]
    acted = [rec(GUARDED, "direct", "direct", i, True, guard=guard_info(True)) for i in range(3)]
    acted.append(rec(BASE, "prefill", "prefill k=1", 0, True, guard=guard_info(True)))
    twice = dict(acted[0], judge="llm:j.gguf")  # the same generation read by another judge
    picked = trace_records(plain + acted + [twice], k=4)
    assert [r["guard"]["intervened"] for r in picked] == [True, True, True, True]
    assert picked[0]["target"] == GUARDED and picked[1]["target"] == BASE
    assert len({(r["target"], r["suite"], r["prompt_id"]) for r in picked}) == 4
