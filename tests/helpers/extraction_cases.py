"""Completions written the way R1-distilled models answer, each with the label the extractor must read (None: no
answer): the cases eval.py's scorer is tested on, and the GRPO correctness reward with it."""

from __future__ import annotations

from medllm.tasks.items import YES_NO_MAYBE, BenchmarkItem

MCQ = BenchmarkItem(
    id="q1",
    question="A 34-year-old woman has weight loss, tremor, exophthalmos and a diffuse goitre. Diagnosis?",
    choices=("A", "B", "C", "D"),
    gold="B",
    options={
        "A": "Toxic multinodular goitre",
        "B": "Graves' disease",
        "C": "Subacute thyroiditis",
        "D": "Metformin",
    },
)
YNM = BenchmarkItem(id="p1", question="Do statins reduce mortality?", choices=YES_NO_MAYBE, gold="yes", context="...")

THINK = "Okay, let's see. Option A would be nodular. Option C is painful. The answer is C? No, wait.\n</think>\n\n"

MCQ_CASES = [
    # bare letters, with and without markdown
    (THINK + "B", "B"),
    (THINK + "(B)", "B"),
    (THINK + "B.", "B"),
    (THINK + "**B**", "B"),
    (THINK + "**B. Graves' disease**\n\nExophthalmos is specific to Graves.", "B"),
    # explicit statements
    (THINK + "The answer is B.", "B"),
    (THINK + "The answer is B because exophthalmos points to an autoimmune cause.", "B"),
    (THINK + "**Answer: C) Subacute thyroiditis**", "C"),
    (THINK + "Therefore, the correct option is (D).", "D"),
    (THINK + "## Final Answer\n\n**Answer:**\n\n**A. Toxic multinodular goitre**", "A"),
    (THINK + "After weighing the findings, $\\boxed{B}$", "B"),
    (THINK + "The most likely diagnosis is explained by TSH receptor antibodies.\n\nOption B is correct.", "B"),
    (THINK + "THE ANSWER IS (c)", "C"),
    (THINK + "The answer is Graves disease.", "B"),
    # a statement wins over options discussed in the explanation
    (
        THINK
        + "The answer is **B**.\n\n- A. Toxic multinodular goitre: no exophthalmos.\n"
        + "- C. Subacute thyroiditis: painful.",
        "B",
    ),
    # the option's own text, exactly one
    (THINK + "The eye signs and diffuse goitre make this Graves disease.", "B"),
    (THINK + "So the diagnosis is graves' disease", "B"),
    # ambiguous: two letters, two option texts, a hedge
    (THINK + "The answer is B. On reflection, the final answer is C.", None),
    (THINK + "It is either Graves' disease or subacute thyroiditis.", None),
    (THINK + "The answer is B or C.", None),
    # no answer: unclosed think block, empty answer, nothing recognisable
    ("Okay, the patient has exophthalmos, so the answer is B. But wait, let me reconsider", None),
    (THINK, None),
    (THINK + "I cannot determine this without more information.", None),
    # a letter outside the choices is not an answer; the reasoning's "answer is C" is never read
    (THINK + "The answer is E.", None),
    # an article is not a letter
    (THINK + "The answer is a benign condition of the thyroid.", None),
]

YNM_CASES = [
    (THINK + "Yes, statins reduce all-cause mortality in secondary prevention.", "yes"),
    (THINK + "The answer is no.", "no"),
    (THINK + "Final answer: maybe", "maybe"),
    (THINK + "**Maybe**\n\nThe evidence is mixed.", "maybe"),
    (THINK + "**Answer:** No", "no"),
    (THINK + "$\\boxed{yes}$", "yes"),
    (THINK + "NO. The trial was negative.", "no"),
    (THINK + "The cohort was small.\n\nIn conclusion: maybe.", "maybe"),
    (THINK + "Based on the findings, the answer is: **Yes**", "yes"),
    # "no" as a word in prose is not an answer
    (THINK + "There is no clear evidence either way in this cohort.", None),
    (THINK + "The answer is yes. Final answer: no.", None),
    ("Statins lower LDL, so yes", None),
]
