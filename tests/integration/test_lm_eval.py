"""lm-evaluation-harness running medllm (``--model medllm``), checked against eval.py and a plain forward.

lm-eval reads the questions with its own loader (a task YAML pointing ``dataset_path: json`` at a local file, as
a user without the hub would) and builds the prompt with its own template; eval.py reads the same file with
``benchmark=mcq``. Both run the tiny model and a saved adapter greedily on the CPU.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from tests.helpers.adapters import save_adapter
from tests.helpers.cli import eval_py
from tests.helpers.extras import needs_lmeval

pytestmark = [pytest.mark.slow, needs_lmeval]

OPTIONS = ["Metformin", "Insulin glargine", "Aspirin", "Atorvastatin"]
INSTRUCTION = "Think it through, then answer."
MAX_NEW_TOKENS = 24
# Our prompt (BenchmarkItem.prompt_text) written in lm-eval's own template language.
PROMPT = (
    "{{question}}\n\nA. {{options.A}}\nB. {{options.B}}\nC. {{options.C}}\nD. {{options.D}}"
    "\n\nAnswer with the letter of the correct option."
)
# lm-eval's usual way of reading a letter out of a generated answer: a regex filter, then exact match.
ANSWER_REGEX = "The answer is \\(?([A-D])\\)?"


def write_questions(path: Path, n: int = 10) -> Path:
    """``n`` four-option questions in benchmark=mcq's layout, answers spread over the letters."""
    rows = [
        {"id": f"q{i}", "question": f"Patient {i} has type 2 diabetes and a creatinine of {i + 1}. First drug?",
         "options": dict(zip("ABCD", OPTIONS[i % 4:] + OPTIONS[: i % 4])), "answer": "ABCD"[(3 * i) % 4]}
        for i in range(n)
    ]  # fmt: skip
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def write_tasks(folder: Path, questions: Path) -> Path:
    """Two lm-eval tasks on the local file: our prompt generated and scored by regex, and the same questions as
    lm-eval's multiple choice (log-likelihood of each letter)."""
    folder.mkdir(parents=True, exist_ok=True)
    dataset = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(questions)}}, "test_split": "test"}
    generate = {
        "task": "medllm_mcq_generate",
        **dataset,
        "output_type": "generate_until",
        "doc_to_text": PROMPT,
        "doc_to_target": "{{answer}}",
        "generation_kwargs": {"until": [], "max_gen_toks": MAX_NEW_TOKENS, "do_sample": False},
        "filter_list": [
            {
                "name": "answer",
                "filter": [
                    {"function": "regex", "regex_pattern": ANSWER_REGEX, "group_select": 0},
                    {"function": "take_first"},
                ],
            }
        ],
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    choice = {
        "task": "medllm_mcq_choice",
        **dataset,
        "output_type": "multiple_choice",
        "doc_to_text": PROMPT + "\nAnswer:",
        "doc_to_choice": ["A", "B", "C", "D"],
        "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
        "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
    }
    rolling = {
        "task": "medllm_mcq_perplexity",
        **dataset,
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{question}}",
        "metric_list": [{"metric": "word_perplexity"}],
    }
    for task in (generate, choice, rolling):
        (folder / f"{task['task']}.yaml").write_text(json.dumps(task))  # JSON is YAML
    return folder


def run_lm_eval(tasks: Path, task: str, model_args: dict, **kwargs) -> dict:
    import lm_eval
    from lm_eval.tasks import TaskManager

    import medllm.evaluation.lm_eval_model  # noqa: F401  registers --model medllm

    return lm_eval.simple_evaluate(
        model="medllm",
        model_args=model_args,
        tasks=[task],
        task_manager=TaskManager(include_path=str(tasks), include_defaults=False),
        device="cpu",
        log_samples=True,
        **kwargs,
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    tmp = tmp_path_factory.mktemp("lm_eval")
    questions = write_questions(tmp / "questions.jsonl")
    return {"questions": questions, "tasks": write_tasks(tmp / "tasks", questions), "adapter": save_adapter(tmp / "a"),
            "tmp": tmp}  # fmt: skip


def test_generated_answers_and_accuracy_agree_with_eval_py(files):
    """On the same items, with the same prompt and greedy decoding, lm-eval's completions are eval.py's, character
    for character, for the base and an adapter: lm-eval's loader and template ask what ours ask (same gold letter,
    same prompt text, ``--system_instruction`` as eval.py's ``instruction``), and its ``--model medllm`` decodes
    what eval.py decodes.

    The accuracies agree because every item is scored the same way by both. They are two different scorers,
    and where a completion gives an answer they can differ: lm-eval's regex reads "The answer is X" anywhere in the
    text, the reasoning included (with ``think_end_token=</think>`` in model_args it reads only the text after it,
    and then a completion that never closes its reasoning is read whole, where eval.py finds no answer);
    eval.py also reads "Answer: C", a letter leading the answer's first line, an option named by its text, and
    refuses an answer that names two letters. ``test_the_two_scorers_differ_only_where_documented`` shows each
    case. The random tiny model states no answer in 24 tokens, so here both score every item wrong: the check is
    that they agree on each item, and that each completion is the same text.
    """
    out = files["tmp"] / "eval"
    eval_py("benchmark=mcq", f"benchmark.path={files['questions']}", f"benchmark.instruction='{INSTRUCTION}'",
            f"adapter_path={files['adapter']}", f"max_new_tokens={MAX_NEW_TOKENS}", "force_answers=false",
            f"hydra.run.dir={out}")  # fmt: skip
    ours = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    report = json.loads((out / "report.json").read_text())["benchmarks"]["mcq"]
    questions = [json.loads(line) for line in files["questions"].read_text().splitlines()]
    completions = {}
    for adapter, label in ((None, "base"), (files["adapter"], f"adapter:{files['adapter']}")):
        args = {"model": "tiny_llama"} | ({"adapter": str(adapter)} if adapter else {})
        results = run_lm_eval(
            files["tasks"], "medllm_mcq_generate", args, apply_chat_template=True, system_instruction=INSTRUCTION
        )
        samples = results["samples"]["medllm_mcq_generate"]
        mine = {row["id"]: row for row in ours if row["model"] == label}
        assert len(samples) == len(mine) == len(questions)
        for sample in samples:
            row = mine[sample["doc"]["id"]]
            assert sample["resps"][0][0] == row["output"]  # the completion, control tokens and all
            assert sample["target"] == row["gold"]
            read = sample["filtered_resps"][0]
            assert (read == row["gold"]) == row["correct"] == bool(sample["exact_match"])
        accuracy = results["results"]["medllm_mcq_generate"]["exact_match,answer"]
        assert accuracy == report[label]["accuracy"]
        completions[label] = [sample["resps"][0][0] for sample in samples]
    assert completions["base"] != completions[f"adapter:{files['adapter']}"]  # the adapter was merged


def test_the_two_scorers_differ_only_where_documented():
    """The completions on which lm-eval's regex (the task above) and eval.py's strict scorer read different answers,
    each for the reason given in the test above."""
    from lm_eval.filters.extraction import RegexFilter

    from medllm.tasks.extraction import extract_answer
    from medllm.tasks.items import BenchmarkItem

    item = BenchmarkItem("q", "First drug?", tuple("ABCD"), "A", options=dict(zip("ABCD", OPTIONS)))
    cases = {  # completion: (lm-eval's regex, eval.py)
        "Metformin first.\n</think>\n\nThe answer is A.": ("A", "A"),  # both: a stated answer after the reasoning
        "The answer is B? No, renal function is fine.\n</think>\n\nThe answer is A.": ("B", "A"),  # reasoning read
        "The answer is A, I think": ("A", None),  # reasoning never closed: no answer for eval.py
        "</think>\n\nAnswer: A": ("[invalid]", "A"),  # other wordings eval.py reads
        "</think>\n\nA. Metformin": ("[invalid]", "A"),
        "</think>\n\nStart with metformin.": ("[invalid]", "A"),  # the option named by its text
        "</think>\n\nThe answer is A or B.": ("A", None),  # two letters: eval.py refuses to pick
    }
    regex = RegexFilter(regex_pattern=ANSWER_REGEX, group_select=0)
    for completion, (theirs, ours) in cases.items():
        (read,) = regex.apply([[completion]], [{}])
        assert (read[0], extract_answer(completion, item)) == (theirs, ours), completion


def _continuation_logprob(model, tokenizer, context: str, continuation: str) -> tuple[float, bool]:
    """log p(continuation | context) from one unpadded transformers forward, the text split into tokens as lm-eval
    splits a context and its continuation (BOS, then the context's ids, then the rest of the whole's)."""
    bos = [tokenizer.bos_token_id]
    context_ids = bos + tokenizer(context, add_special_tokens=False)["input_ids"]
    whole = bos + tokenizer(context + continuation, add_special_tokens=False)["input_ids"]
    wanted = torch.tensor(whole[len(context_ids) :])
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([whole[:-1]])).logits[0, len(context_ids) - 1 :]
    scores = torch.log_softmax(logits.float(), -1)
    return scores.gather(-1, wanted[:, None]).sum().item(), bool((scores.argmax(-1) == wanted).all())


@pytest.mark.parametrize("with_adapter", [False, True], ids=["base", "adapter"])
def test_multiple_choice_loglikelihoods_equal_a_plain_forward(files, with_adapter):
    """lm-eval's multiple-choice scoring through ``--model medllm`` (batched, right-padded, the adapter merged) gives
    each option the log-likelihood a single unpadded forward of the tiny model (with the adapter unmerged, through
    PEFT) gives it, and so the same accuracy: the base's to 1e-5; with the adapter to 2e-6 of its size (float32 sums
    ``(W + BA)x`` in another order than PEFT's ``Wx + B(Ax)``: ~1e-5 on a log-likelihood of -14), and the greedy flags
    exactly."""
    from peft import PeftModel

    from medllm.models.tiny import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, seed=0).eval()
    args = {"model": "tiny_llama", "batch_size": 3}
    if with_adapter:
        model = PeftModel.from_pretrained(model, files["adapter"]).eval()
        args["adapter"] = str(files["adapter"])
    results = run_lm_eval(files["tasks"], "medllm_mcq_choice", args)
    samples = results["samples"]["medllm_mcq_choice"]
    right = 0
    for sample in samples:
        expected = [_continuation_logprob(model, tokenizer, *pair) for pair in sample["arguments"]]
        got = [tuple(resp[0]) for resp in sample["resps"]]
        assert [g for _, g in got] == [g for _, g in expected]
        tolerance = {"rel": 2e-6} if with_adapter else {"abs": 1e-5}
        assert [ll for ll, _ in got] == pytest.approx([ll for ll, _ in expected], **tolerance)
        right += max(range(4), key=lambda i: expected[i][0]) == sample["target"]
    assert results["results"]["medllm_mcq_choice"]["acc,none"] == pytest.approx(right / len(samples))


def test_multiple_choice_agrees_with_lm_evals_own_hf_model(files, tmp_path):
    """lm-eval's own ``--model hf`` on the tiny model's weights saved as a transformers checkpoint (BOS added, as
    medllm adds it) gives every option the log-likelihood and greedy flag ``--model medllm`` gives it."""
    import lm_eval
    from lm_eval.tasks import TaskManager

    from medllm.models.tiny import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    tiny_llama(tokenizer, seed=0).save_pretrained(tmp_path / "tiny")
    tokenizer.save_pretrained(tmp_path / "tiny")
    ours = run_lm_eval(files["tasks"], "medllm_mcq_choice", {"model": "tiny_llama"})
    theirs = lm_eval.simple_evaluate(
        model="hf",
        model_args={"pretrained": str(tmp_path / "tiny"), "add_bos_token": True, "dtype": "float32"},
        tasks=["medllm_mcq_choice"],
        task_manager=TaskManager(include_path=str(files["tasks"]), include_defaults=False),
        device="cpu",
        log_samples=True,
    )
    pairs = zip(ours["samples"]["medllm_mcq_choice"], theirs["samples"]["medllm_mcq_choice"], strict=True)
    for mine, hf in pairs:
        assert mine["arguments"] == hf["arguments"]
        assert [r[0][1] for r in mine["resps"]] == [r[0][1] for r in hf["resps"]]
        assert [r[0][0] for r in mine["resps"]] == pytest.approx([r[0][0] for r in hf["resps"]], abs=1e-5)
    assert ours["results"]["medllm_mcq_choice"]["acc,none"] == theirs["results"]["medllm_mcq_choice"]["acc,none"]


def test_rolling_loglikelihoods_equal_a_plain_forward(files):
    """A perplexity task's log-likelihood of each text (after BOS, in one window: the texts are short) is what one
    transformers forward gives it."""
    from medllm.models.tiny import tiny_llama, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, seed=0).eval()
    samples = run_lm_eval(files["tasks"], "medllm_mcq_perplexity", {"model": "tiny_llama"})["samples"]
    for sample in samples["medllm_mcq_perplexity"]:
        ids = [tokenizer.bos_token_id, *tokenizer(sample["doc"]["question"], add_special_tokens=False)["input_ids"]]
        with torch.no_grad():
            scores = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), -1)
        expected = scores.gather(-1, torch.tensor(ids[1:])[:, None]).sum().item()
        assert sample["resps"][0][0] == pytest.approx(expected, abs=1e-5)


def test_a_question_spelling_control_tokens_is_asked_as_eval_py_asks_it():
    """``--apply_chat_template`` renders eval.py's prompt, and its ids keep a question's text literal: "</think>" in a
    question stays those characters (the tokenizer alone would make it the control token); a continuation scored
    after the prompt is appended to those ids."""
    from medllm.data.chat_format import R1ChatFormat
    from medllm.evaluation.lm_eval_model import MedllmLM

    lm = MedllmLM(model="tiny_llama", device="cpu")
    question = "Does </think> end <｜Assistant｜> turns?"
    fmt = R1ChatFormat(instruction=INSTRUCTION)
    text = lm.apply_chat_template([{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": question}])
    (ours,) = fmt.encode_generation_prompts(lm.tokenizer, [question])
    assert text == fmt.generation_prompt(question)
    assert lm.tok_encode(text) == ours != lm.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert lm.tok_encode(text + " A") == ours + lm.tokenizer(" A", add_special_tokens=False)["input_ids"]


def test_wrong_model_args_are_named_before_any_model_loads():
    from medllm.errors import ConfigError
    from medllm.evaluation.lm_eval_model import MedllmLM

    with pytest.raises(ConfigError, match=re.escape("unknown model_args ['pretrained']")):
        MedllmLM(model="tiny_llama", pretrained="gpt2")
    with pytest.raises(ConfigError, match="adapter=/nowhere: no adapter_config.json there"):
        MedllmLM(model="tiny_llama", adapter="/nowhere")
    with pytest.raises(ConfigError, match="decode_attention"):
        MedllmLM(model="tiny_llama", decode_attention="fast")
