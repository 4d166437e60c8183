"""The R1 chat format: what the model reads, and exactly which tokens it is trained on."""

from __future__ import annotations

import pytest

from medllm.data.chat_format import ASSISTANT, EOS, IGNORE_INDEX, THINK_CLOSE, THINK_OPEN, R1ChatFormat

QUESTION = "A 58-year-old man has chest pain. What is the diagnosis?"
REASONING = "ST elevation in II, III and aVF points to the inferior wall."
RESPONSE = "Inferior STEMI."


def encode(tokenizer, fmt=None, train_on="completion"):
    out = (fmt or R1ChatFormat()).tokenize_batch(tokenizer, [QUESTION], [REASONING], [RESPONSE], train_on=train_on)
    return out["input_ids"][0], out["labels"][0]


def test_ids_equal_tokenizing_the_whole_rendered_text(tokenizer):
    ids, _ = encode(tokenizer)
    whole = tokenizer(R1ChatFormat().render(QUESTION, REASONING, RESPONSE), add_special_tokens=False)["input_ids"]
    assert ids == whole


def test_labels_mask_exactly_the_prompt(tokenizer):
    fmt = R1ChatFormat()
    ids, labels = encode(tokenizer, fmt)
    n_prompt = len(tokenizer(fmt.prompt(QUESTION), add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE_INDEX] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[n_prompt - 1] == tokenizer.convert_tokens_to_ids(ASSISTANT)


def test_reasoning_answer_and_final_eos_are_trained(tokenizer):
    ids, labels = encode(tokenizer)
    trained = tokenizer.decode([t for t, label in zip(ids, labels) if label != IGNORE_INDEX])
    assert trained == f"{THINK_OPEN}\n{REASONING}\n{THINK_CLOSE}\n\n{RESPONSE}{EOS}"
    assert labels[-1] == tokenizer.eos_token_id


def test_train_on_all_trains_everything_but_the_first_token(tokenizer):
    ids, labels = encode(tokenizer, train_on="all")
    assert labels[0] == IGNORE_INDEX
    assert labels[1:] == ids[1:]


def test_instruction_goes_before_the_question_in_the_user_turn(tokenizer):
    fmt = R1ChatFormat(instruction="You are a careful physician.")
    assert fmt.prompt(QUESTION).index("You are a careful physician.\n\n" + QUESTION) > 0
    assert fmt.generation_prompt(QUESTION).endswith(f"{ASSISTANT}{THINK_OPEN}\n")


def test_unknown_train_on_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="train_on"):
        encode(tokenizer, train_on="prompt")
