"""medllm as a model of lm-evaluation-harness: ``lm_eval --model medllm``, any of its tasks on our decoder.

The base is loaded as eval.py's merged engine loads it (``model=`` names a model group of conf/model, as on
eval.py's command line; ``model.<key>=`` overrides one of its keys), the adapter (``adapter=``) merged into
its weights. ``generate_until`` runs through the slot-refill ``Decoder``, greedy unless a task's
``generation_kwargs`` ask for sampling; ``loglikelihood`` and ``loglikelihood_rolling`` through plain batched
forwards of the same (merged) model.

lm-eval finds a model class only once the module that registers it is imported, and it loads no plugins, so
its command line runs here, after the registration::

    python -m medllm.evaluation.lm_eval_model run --model medllm \\
        --model_args model=r1_distill_llama_8b_hf,adapter=outputs/.../adapter --tasks medqa_4options \\
        --apply_chat_template --device cuda

and from Python ``import medllm.evaluation.lm_eval_model`` before ``lm_eval.simple_evaluate(model="medllm")``.

What differs from lm-eval's ``hf`` model, on purpose:

- ``--apply_chat_template`` renders R1's format as training and eval.py do (``medllm.data.chat_format``):
  the user turn (``--system_instruction`` before it, as eval.py's ``instruction``), then the assistant turn
  opened with ``<think>\\n``. The tokenizer's own chat template would delete the reasoning of earlier turns.
- A completion's text keeps ``</think>`` and the other control tokens, as eval.py's predictions do, so a
  task's filter can tell the reasoning from the answer; ``think_end_token=</think>`` returns only the text
  after it, as lm-eval's ``hf`` model does with that argument.
- The decoder stops a row at EOS or ``max_gen_toks``, not at a task's other stop strings: the text is cut at
  the first of them afterwards, which gives the same text (a token never depends on later ones) at the cost
  of the tokens past the stop.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from medllm.config.compose import compose_config
from medllm.config.inputs import ADAPTER_CONFIG
from medllm.config.schema import DECODE_ATTENTION
from medllm.data.chat_format import ASSISTANT, BOS, EOS, THINK_OPEN, USER, plain_text_encoder
from medllm.errors import ConfigError, MedllmError
from medllm.evaluation.evaluate import check_adapter_base
from medllm.generation.decoding import KV_BLOCK, Decoder, Sampling, auto_batch_size
from medllm.generation.hf_generate import decode_completion, special_ids
from medllm.generation.merged import load_merged_base, merged
from medllm.models.backends import get_backend

try:
    from lm_eval.api.model import TemplateLM
    from lm_eval.api.registry import register_model
    from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window
except ImportError as err:  # one line, not lm_eval's traceback
    raise MedllmError(f'lm-evaluation-harness is not installed ({err}): pip install -e ".[lmeval]"') from None

log = logging.getLogger(__name__)

# lm-eval's own default for a task that sets no max_gen_toks.
DEFAULT_MAX_GEN_TOKS = 256
# What ends a rendered conversation that asks for an answer: the assistant's turn, its reasoning opened.
GENERATION_PROMPT = f"{ASSISTANT}{THINK_OPEN}\n"
# The generation_kwargs the decoder honours (besides until and max_gen_toks).
SAMPLING_KEYS = {"do_sample", "temperature", "top_p"}
# Sequences scored in one forward by loglikelihood where batch_size is auto.
LOGLIKELIHOOD_BATCH = 16


def _override_value(value: Any) -> str:
    """A model_args value (lm-eval has turned "true" and "8" into Python values) as a Hydra override spells it."""
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


def model_config(model: str, overrides: dict[str, Any]) -> DictConfig:
    """The ``model`` group of eval.yaml, composed as eval.py composes it, with ``model.<key>`` overrides."""
    wrong = [key for key in overrides if not key.startswith("model.")]
    if wrong:
        raise ConfigError(
            f"unknown model_args {wrong}: medllm takes model, adapter, max_gen_toks, batch_size, decode_attention, "
            "think_end_token, seed and model.<key>=<value>"
        )
    cfg = compose_config("eval", [f"model={model}", *(f"{k}={_override_value(v)}" for k, v in overrides.items())])
    return cfg.model


@register_model("medllm")
class MedllmLM(TemplateLM):
    """A medllm base (and adapter) behind lm-eval's ``LM`` interface; see the module doc."""

    def __init__(
        self,
        model: str = "tiny_llama",
        adapter: str | None = None,
        max_gen_toks: int = DEFAULT_MAX_GEN_TOKS,
        batch_size: int | str = "auto",
        decode_attention: str = "auto",
        think_end_token: str | None = None,
        seed: int = 0,
        device: str | None = None,
        max_batch_size: int | None = None,
        **model_overrides: Any,
    ) -> None:
        super().__init__()
        DECODE_ATTENTION.check("decode_attention", decode_attention)
        self.model_cfg = model_config(model, model_overrides)
        if adapter:
            if not (Path(str(adapter)).expanduser() / ADAPTER_CONFIG).is_file():
                raise ConfigError(f"adapter={adapter}: no {ADAPTER_CONFIG} there; pass the folder train.py saved")
            check_adapter_base(str(adapter), self.model_cfg)
        self.tokenizer = get_backend(self.model_cfg.backend).load_tokenizer(self.model_cfg)
        accelerator = "cpu" if device is not None and str(device).startswith("cpu") else "auto"
        self._exit = contextlib.ExitStack()
        self.model = load_merged_base(self.model_cfg, self.tokenizer, accelerator)
        if adapter:
            self.model = self._exit.enter_context(merged(self.model, str(adapter)))
        self._device = self.model.device
        self.adapter = adapter
        self.max_gen_toks = int(max_gen_toks)
        self.batch_size = None if str(batch_size).startswith("auto") else int(batch_size)
        self.max_batch_size = None if max_batch_size is None else int(max_batch_size)  # caps batch_size=auto
        self.decode_attention = decode_attention
        self.think_end_token = think_end_token
        self.seed = int(seed)
        self.eos_id, self.pad_id = special_ids(self.tokenizer)
        self._decoder: Decoder | None = None
        self._rendered: dict[str, list[int]] = {}  # apply_chat_template's conversations: their ids

    # What lm-eval asks of every model.

    @property
    def eot_token_id(self) -> int:
        return self.eos_id

    @property
    def prefix_token_id(self) -> int:
        """What a continuation with no context is scored after: BOS, which starts every R1 sequence."""
        return self.tokenizer.bos_token_id if self.tokenizer.bos_token_id is not None else self.eos_id

    @property
    def max_length(self) -> int:
        return int(self.model.config.max_position_embeddings)

    @property
    def tokenizer_name(self) -> str:
        return str(self.model_cfg.get("name_or_path") or self.model_cfg.backend)

    def chat_template(self, chat_template: bool | str = False) -> str:
        return "medllm R1 format: BOS, <｜User｜>{instruction}\\n\\n{question}<｜Assistant｜><think>\\n"

    def apply_chat_template(self, chat_history: list[dict[str, str]], add_generation_prompt: bool = True) -> str:
        """The R1 conversation as ``medllm.data.chat_format`` renders it: a system message is the instruction put
        before the first user turn (a blank line between), an assistant turn ends with EOS.

        Its ids are kept for ``tok_encode``: the messages' text literal (a question that spells ``</think>`` is
        those characters, not the control token), the format's markers control tokens, as eval.py encodes them.
        """
        system = [m["content"] for m in chat_history if m["role"] == "system"]
        instruction = "\n\n".join(system)
        pieces: list[tuple[str, bool]] = [(BOS, True)]  # (text, whether it is one of the format's markers)
        for message in chat_history:
            if message["role"] == "user":
                content = f"{instruction}\n\n{message['content']}" if instruction else message["content"]
                pieces += [(USER, True), (content, False)]
                instruction = ""
            elif message["role"] == "assistant":
                pieces += [(ASSISTANT, True), (message["content"], False), (EOS, True)]
        if add_generation_prompt:
            pieces += [(ASSISTANT, True), (THINK_OPEN, True), ("\n", False)]
        encoder = plain_text_encoder(self.tokenizer)
        ids = [i for text, marker in pieces for i in (encoder.markers if marker else encoder.encode)([text])[0]]
        text = "".join(text for text, _ in pieces)
        self._rendered[text] = ids
        return text

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs: Any) -> list[int]:
        """The string's ids. A conversation ``apply_chat_template`` rendered (and what follows its generation
        prompt: a continuation to score) keeps the ids it was rendered with; other text is the tokenizer's, BOS
        first (R1 models always saw it) unless the string starts with it or ``add_special_tokens`` is false."""
        if string in self._rendered:
            return list(self._rendered[string])
        opened = string.rfind(GENERATION_PROMPT)
        if opened >= 0 and (head := string[: opened + len(GENERATION_PROMPT)]) in self._rendered:
            rest = string[len(head) :]
            return self._rendered[head] + (self.tokenizer(rest, add_special_tokens=False)["input_ids"] if rest else [])
        ids = self.tokenizer(string, add_special_tokens=False)["input_ids"]
        if add_special_tokens is not False and not string.startswith(BOS) and self.tokenizer.bos_token_id is not None:
            ids = [self.tokenizer.bos_token_id, *ids]
        return ids

    # Generation.

    def _decoder_for(self, prompts: Sequence[Sequence[int]], max_new_tokens: int) -> Decoder:
        """The decoder, rebuilt only when these prompts or this budget don't fit its cache."""
        longest = max(map(len, prompts))
        decoder = self._decoder
        if decoder is None or decoder.max_new_tokens < max_new_tokens or longest + max_new_tokens > decoder.cache_len:
            self._decoder = decoder = None  # its cache freed before the larger one is allocated
            batch_size = None if self.batch_size is None else min(self.batch_size, len(prompts))
            if batch_size is None and self.max_batch_size is not None:
                cache_len = KV_BLOCK * math.ceil((longest + max_new_tokens) / KV_BLOCK)
                batch_size = min(auto_batch_size(self.model, cache_len, len(prompts), longest), self.max_batch_size)
            decoder = Decoder(
                self.model, longest, max_new_tokens, batch_size, len(prompts), attention=self.decode_attention
            )
            self._decoder = decoder
        return decoder

    def generate_until(self, requests: list[Any], disable_tqdm: bool = False) -> list[str]:
        """Each request's completion, the requests with the same generation settings decoded together."""
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(json.dumps(request.args[1], sort_keys=True, default=str), []).append(index)
        eos_text = self.tokenizer.decode([self.eos_id], skip_special_tokens=False)
        results: list[str] = [""] * len(requests)
        for indices in groups.values():
            gen_kwargs = requests[indices[0]].args[1]
            kwargs = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kwargs.pop("until", None), eos=eos_text)
            budget = int(kwargs.pop("max_gen_toks"))
            unknown = sorted(set(kwargs) - SAMPLING_KEYS)
            if unknown:
                raise ConfigError(
                    f"generation_kwargs {unknown}: medllm's decoder is greedy or samples with temperature and top_p"
                )
            do_sample = bool(kwargs.get("do_sample")) and float(kwargs.get("temperature") or 0.0) > 0
            sampling = Sampling(do_sample, float(kwargs.get("temperature") or 1.0), float(kwargs.get("top_p", 1.0)))
            prompts = [self.tok_encode(requests[i].args[0]) for i in indices]
            decoder = self._decoder_for(prompts, budget)
            ids = decoder.decode(
                prompts, eos_id=self.eos_id, pad_id=self.pad_id, sampling=sampling, seed=self.seed,
                row_budgets=[budget] * len(prompts), progress=not disable_tqdm,
            )  # fmt: skip
            for index, row in zip(indices, ids, strict=True):
                text = decode_completion(self.tokenizer, row, self.pad_id)
                text = postprocess_generated_text(text, until, self.think_end_token)
                results[index] = text
                self.cache_hook.add_partial("generate_until", requests[index].args, text)
        return results

    # Log-likelihoods.

    @torch.inference_mode()
    def _loglikelihood_tokens(self, requests: list[Any], disable_tqdm: bool = False, **kwargs: Any):
        """``(sum of the continuation's log-probabilities, whether greedy decoding gives it)`` per request, the
        sequences (the last ``max_length`` tokens of context + continuation) right-padded in batches."""
        order = sorted(range(len(requests)), key=lambda i: -len(requests[i][1]) - len(requests[i][2]))
        results: list[tuple[float, bool]] = [(0.0, False)] * len(requests)
        step = self.batch_size or min(LOGLIKELIHOOD_BATCH, self.max_batch_size or LOGLIKELIHOOD_BATCH)
        for first in range(0, len(order), step):
            batch = order[first : first + step]
            rows = [(list(requests[i][1]) + list(requests[i][2]))[-(self.max_length + 1) :][:-1] for i in batch]
            width = max(map(len, rows))
            ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
            mask = torch.zeros_like(ids)
            for row, tokens in enumerate(rows):
                ids[row, : len(tokens)] = torch.as_tensor(tokens)
                mask[row, : len(tokens)] = 1
            # The vocabulary's logits only where a continuation is scored (128k of them a position for R1 models).
            out = self.model.get_decoder()(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            for row, index in enumerate(batch):
                continuation = torch.as_tensor(requests[index][2], device=self.device)
                end = len(rows[row])
                logits = self.model.get_output_embeddings()(out.last_hidden_state[row, end - len(continuation) : end])
                scores = torch.log_softmax(logits.float(), -1)
                logprob = scores.gather(-1, continuation[:, None]).sum().item()
                greedy = bool((scores.argmax(-1) == continuation).all())
                results[index] = (logprob, greedy)
                if requests[index][0] is not None:
                    self.cache_hook.add_partial("loglikelihood", requests[index][0], (logprob, greedy))
        return results

    def loglikelihood_rolling(self, requests: list[Any], disable_tqdm: bool = False) -> list[float]:
        """Each string's whole log-likelihood after BOS, in windows of the model's context (lm-eval's own split)."""
        results = []
        for request in requests:
            (string,) = request.args
            windows = [
                (None, *make_disjoint_window(window))
                for window in get_rolling_token_windows(
                    token_list=self.tok_encode(string, add_special_tokens=False),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                )
            ]
            total = sum(logprob for logprob, _ in self._loglikelihood_tokens(windows, disable_tqdm=True))
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (string,), total)
        return results


def main() -> None:
    """lm-eval's command line, with ``--model medllm`` registered."""
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
