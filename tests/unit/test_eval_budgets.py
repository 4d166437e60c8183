"""Accuracy against the thinking budget, on completions whose reasoning closes at known positions: each is cut and
made to answer exactly where its reasoning ran past a budget, and keeps its own answer elsewhere."""

from __future__ import annotations

from medllm.data.chat_format import plain_text_encoder
from medllm.evaluation.answers import Forcing, Question, _force
from medllm.evaluation.scores import budget_curve, cut_off_metrics
from medllm.tasks.items import BenchmarkItem

ITEM = BenchmarkItem("q", "Which?", ("A", "B"), "B", options={"A": "Aspirin", "B": "Heparin"})


def test_answers_are_forced_where_the_reasoning_ran_past_each_budget(tokenizer):
    encoder = plain_text_encoder(tokenizer)
    forcing = Forcing(tokenizer, max_new_tokens=12, budgets=[4, 8], at_limit=True)
    (word,) = encoder.encode(["x"])
    close, (answer_a,) = forcing.think_close, encoder.encode([" A."])
    never_closes = word * 12  # cut at the limit, reasoning open
    closes_at_6 = word * 5 + close + answer_a + word * (6 - len(answer_a))  # 12 tokens, </think> ends at token 6
    ends_at_6 = word * 6  # stopped (EOS) after 6 tokens, reasoning open: never reached 8
    assert forcing.closes_at(closes_at_6) == 6 and forcing.closes_at(never_closes) is None
    assert forcing.budgets_for(never_closes) == [4, 8, 12]
    assert forcing.budgets_for(closes_at_6) == [4]  # past 4 still reasoning; within 8 and 12 it had answered
    assert forcing.budgets_for(ends_at_6) == [4]

    prompts = [[1, 2], [1, 3], [1, 4]]
    questions = [Question("b", ITEM, "p", p) for p in prompts]
    rows = [{"id": "q", "parsed": parsed, "gold": "B", "cut_off": cut} for parsed, cut in
            ((None, True), ("A", False), (None, False))]  # fmt: skip
    waiting = {n: (row, ids, forcing.budgets_for(ids))
               for n, (row, ids) in enumerate(zip(rows, (never_closes, closes_at_6, ends_at_6)))}  # fmt: skip
    asked, recorded = [], []
    (answer_b,) = encoder.encode([" B"])

    def short(forced):  # a model that answers B whenever it is made to
        asked.extend(forced)
        return [answer_b for _ in forced]

    _force(short, tokenizer, "base", questions, waiting, forcing, 3, recorded.append)
    suffix = forcing.suffix
    assert asked == [
        prompts[0] + never_closes[:4] + suffix,
        prompts[0] + never_closes[:8] + suffix,
        prompts[0] + never_closes + suffix,
        prompts[1] + closes_at_6[:4] + suffix,
        prompts[2] + ends_at_6[:4] + suffix,
    ]  # fmt: skip
    assert [row.get("forced") for row in recorded] == [{"4": "B", "8": "B", "12": "B"}, {"4": "B"}, {"4": "B"}]

    curve = budget_curve({("b", "base"): recorded}, [4, 8, 12])
    # at 4 every completion is cut and answers B; past it, the one that answered A keeps A, the stopped one None
    assert curve == {"b": {"base": {"4": 1.0, "8": 1 / 3, "12": 1 / 3}}}
    for row in recorded:
        row["correct"] = row["parsed"] == row["gold"]
    metrics = cut_off_metrics(recorded, limit=12)
    assert metrics == {"cut_off_rate": 1 / 3, "accuracy_finished": 0.0, "accuracy_forced": 1 / 3}
