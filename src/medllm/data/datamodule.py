"""The LightningDataModule: rows in (hub, local file or sample), batches of trained tokens out."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import datasets
import torch
from torch.utils.data import DataLoader

from medllm.config.resolvers import launched_processes
from medllm.config.schema import Data
from medllm.config.schema_check import typed
from medllm.data import prepare, records, rows
from medllm.data.chat_format import R1ChatFormat
from medllm.data.collate import PackCollator, PackedDataset, PadCollator, pack
from medllm.data.fingerprint import splits_fingerprint
from medllm.data.sampler import ResumableBatchSampler, ResumableDataModule

log = logging.getLogger(__name__)

CACHE_WAIT_S = 3600.0


class ReasoningDataModule(ResumableDataModule):
    """Loads, validates, formats (R1 chat format), tokenizes, masks, splits and batches reasoning rows.

    Every run reads and validates the rows and applies the PHI policy (``rows.load_valid_rows``,
    done once per process, so an entry point's early ``rows.check_data`` costs nothing twice).
    Tokenizing runs once per distinct rows, settings and code, and is cached on disk, so a second run
    starts at once. Bad input raises a :class:`records.DataError` naming the file, row and field (or
    the setting) before any model is loaded.
    """

    def __init__(self, tokenizer, **settings):
        """``settings``: the data group's keys (``medllm.config.schema.Data``: its defaults, its rules)."""
        super().__init__()
        self.tokenizer = tokenizer
        self.settings = data = typed(settings, Data, "data.")
        self.sources = rows.row_sources(data)
        self.columns = records.Columns(**dataclasses.asdict(data.columns))
        self.chat_format = R1ChatFormat(instruction=data.instruction)
        self.train_on, self.on_bad_row, self.too_long, self.phi_check = (
            data.train_on, data.on_bad_row, data.too_long, data.phi_check
        )  # fmt: skip
        self.val_size, self.max_seq_length = data.val_size, data.max_seq_length
        self.packing, self.packed_static_shape, self.group_by_length = (
            data.packing, data.packed_static_shape, data.group_by_length
        )  # fmt: skip
        self.batch_size, self.eval_batch_size = data.batch_size, data.eval_batch_size or data.batch_size
        self.pad_to_multiple_of, self.num_workers, self.num_proc = (
            data.pad_to_multiple_of,
            data.num_workers,
            data.num_proc,
        )
        self.cache_dir = Path(data.cache_dir or rows.DEFAULT_CACHE_DIR).expanduser()
        self.seed = data.seed
        self.splits: dict[str, datasets.Dataset] = {}
        self.summary: prepare.DataSummary | None = None

    # ---- preparation -------------------------------------------------------------------------
    def _cache_dir(self, clean_rows: datasets.Dataset) -> Path:
        # Keyed by the rows' content and every setting and code version that shapes the examples.
        key = prepare.cache_key(
            rows=prepare.rows_digest(clean_rows),
            instruction=self.chat_format.instruction,
            train_on=self.train_on,
            too_long=self.too_long,
            max_seq_length=self.max_seq_length,
            tokenizer=prepare.tokenizer_digest(self.tokenizer),
        )
        return self.cache_dir / "prepared" / key

    def _prepared(self, source: rows.RowSource, build: bool) -> tuple[datasets.Dataset, prepare.DataSummary]:
        """Rows validated afresh (bad rows and the PHI policy are checked every run, cached or not), then
        the tokenized examples: from the cache, or built (``build``) or waited for (other DDP ranks)."""
        valid = rows.load_valid_rows(source, self.columns, self.on_bad_row, self.phi_check)
        target = self._cache_dir(valid.rows)
        cached = prepare.load_cached(target) if build else prepare.wait_for_cache(target, CACHE_WAIT_S)
        if cached is None and not build:
            raise RuntimeError(f"prepared data for {source.name} did not appear in {target}")
        if cached is None:
            tokenized = prepare.tokenize(
                valid.rows,
                self.tokenizer,
                self.chat_format,
                self.max_seq_length,
                self.train_on,
                self.too_long,
                self.num_proc,
            )
            if len(tokenized.examples) == 0:
                raise prepare.nothing_fits_error(source.name, tokenized, self.max_seq_length)
            token_summary = prepare.DataSummary(
                source=source.name,
                dropped=dict(tokenized.dropped),
                truncated=tokenized.truncated,
                control_text_rows=tokenized.control_text_rows,
            )
            cached = tokenized.examples, prepare.summarize(tokenized.examples, token_summary)
            prepare.save_atomically(*cached, target)
        examples, summary = cached
        summary = dataclasses.replace(
            summary,
            source=source.name,
            rows_read=valid.report.rows_read,
            dropped={**valid.report.dropped, **summary.dropped},
            phi=valid.phi,
        )
        return examples, summary

    def prepare_data(self) -> None:
        for source in self.sources:
            self._prepared(source, build=True)

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        build = os.environ.get("LOCAL_RANK", "0") == "0"
        examples, self.summary = self._prepared(self.sources[0], build)
        n_val = rows.validation_count(self.val_size, len(examples), self.summary.source, self.summary.dropped)
        split = examples.train_test_split(test_size=n_val, seed=self.seed)
        self.splits = {"train": split["train"], "val": split["test"]}
        self.summary.val_prompts_in_train = shared_prompts(self.splits["train"], self.splits["val"])
        if self.summary.val_prompts_in_train:
            log.warning(
                "%s: %d of the %d validation rows ask a question some training rows ask too (rows of one question "
                "with different answers): val_loss on them measures recall of training answers; give each question "
                "one row",
                self.summary.source,
                self.summary.val_prompts_in_train,
                n_val,
            )
        if len(self.sources) > 1:
            self.splits["test"] = self._prepared(self.sources[1], build)[0]
        if self.packing:
            lengths = self.splits["train"]["length"]
            self.train_bins = pack(lengths, self.max_seq_length)
            self.summary.packing_efficiency = sum(lengths) / (len(self.train_bins) * self.max_seq_length)
        self._check_enough_for_every_process(n_val)
        for line in self.summary.lines():
            log.info(line)

    def fingerprint(self) -> dict[str, dict]:
        """What the run record keeps of the rows trained on and held out (``medllm.data.fingerprint``)."""
        return splits_fingerprint(self.splits)

    def _check_enough_for_every_process(self, n_val: int) -> None:
        """Under DDP each process validates on its share of the rows and trains on its own rows of each
        step: too few rows leave a process none, which ends the run in Lightning's error mid-way."""
        processes = launched_processes()  # torchrun's or srun's, before the process group exists
        if processes == 1:
            return
        source = self.summary.source
        if 0 < n_val < processes:
            raise records.DataError(
                f"{source}: data.val_size={self.val_size} holds out {n_val} row(s) for {processes} processes, each "
                f"of which validates on its share: raise data.val_size to at least {processes}."
            )
        units = len(self.train_bins) if self.packing else len(self.splits["train"])
        what = "packed sequences" if self.packing else "training rows"
        if units < self.batch_size * processes:
            raise records.DataError(
                f"{source}: {units} {what} make no step of data.batch_size={self.batch_size} on each of {processes} "
                "processes: lower data.batch_size, or train on more rows."
            )
        left_out = units % (self.batch_size * processes)
        if 0 < left_out < processes:  # the sampler shares a short last global batch out only if each gets one
            log.warning(
                "%d of the %d %s are left out of each epoch: a last global batch of %d would leave some of the %d "
                "processes with none",
                left_out,
                units,
                what,
                left_out,
                processes,
            )

    # ---- loaders -----------------------------------------------------------------------------
    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else self.tokenizer.eos_token_id

    def _loader(self, dataset, sampler: ResumableBatchSampler, collate=None) -> DataLoader:
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            collate_fn=collate or PadCollator(self.pad_token_id, self.pad_to_multiple_of),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            pin_memory=torch.cuda.is_available(),  # faster, asynchronous copies to the GPU
        )

    def _row_dataset(self, split: str) -> datasets.Dataset:
        # NumPy rows: the collators copy them into the batch faster than Python lists (0.8 ms against 1.1
        # for 4 x 2,048 tokens).
        return self.splits[split].with_format("numpy", columns=["input_ids", "labels"])

    def train_dataloader(self) -> DataLoader:
        if self.packing:
            dataset = PackedDataset(self._row_dataset("train"), self.train_bins)
            length = self.batch_size * self.max_seq_length if self.packed_static_shape else None
            collate = PackCollator(self.pad_token_id, self.pad_to_multiple_of, length)
            lengths = None
        else:
            dataset, collate = self._row_dataset("train"), None
            lengths = self.splits["train"]["length"] if self.group_by_length else None
        return self._loader(dataset, self.resumable_sampler(len(dataset), self.batch_size, self.seed, lengths), collate)

    def _eval_loader(self, split: str) -> DataLoader:
        dataset = self._row_dataset(split)
        return self._loader(dataset, ResumableBatchSampler(len(dataset), self.eval_batch_size, shuffle=False))

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader("test" if "test" in self.splits else "val")


def shared_prompts(train: Any, val: Any) -> int:
    """How many rows of ``val`` have a prompt (the tokens before the first trained one) that a row of ``train``
    has too; rows trained from their first token have no prompt and are not counted."""

    def prompt(ids: list[int], labels: list[int]) -> tuple[int, ...] | None:
        start = next((i for i, label in enumerate(labels) if label != -100), 0)
        return tuple(ids[:start]) or None

    seen = {prompt(ids, labels) for ids, labels in zip(train["input_ids"], train["labels"], strict=True)}
    return sum(
        1 for ids, labels in zip(val["input_ids"], val["labels"], strict=True) if prompt(ids, labels) in seen - {None}
    )
