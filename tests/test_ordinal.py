"""Ordinal task lists are built for the tokenizer at hand, and what cannot be built is reported."""

from __future__ import annotations

import pytest

import headzoo as hz
from headzoo.testing import word_tokenizer


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    """A byte-level BPE tokenizer trained offline on text where ordinal words follow a space."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    lists = hz.ORDINAL_LISTS
    text = " ".join(" ".join(items) for items, _ in lists.values())
    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=["<|endoftext|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator([text] * 50, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    path = tmp_path_factory.mktemp("bpe")
    tok.save_pretrained(path)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def test_both_forms_on_a_byte_level_bpe(bpe):
    tasks, skipped = hz.ordinal_tasks(bpe)
    by_name = {t.name: t for t in tasks}
    days = by_name["days_space"]
    assert days.items == tuple(hz.ORDINAL_LISTS["days"][0]) and days.cyclic
    assert [bpe.decode([i]) for i in days.token_ids] == [" " + d for d in days.items]
    for task in tasks:  # every kept token really is the single token of its item
        form = " {}" if task.name.endswith("_space") else "{}"
        for item, tid in zip(task.items, task.token_ids):
            assert bpe.encode(form.format(item), add_special_tokens=False) == [tid]
    reported = set(by_name) | set(skipped)
    assert reported == {f"{n}{s}" for n in hz.ORDINAL_LISTS for s in ("", "_space")}  # nothing dropped silently


def test_gaps_split_a_list_and_break_its_cycle():
    days = [d for d in hz.ORDINAL_LISTS["days"][0] if d != "Thursday"]
    tok = word_tokenizer(days + ["Jan", "Feb"])
    tasks, skipped = hz.ordinal_tasks(tok)
    by_name = {t.name: t for t in tasks}
    assert by_name["days"].items == ("Monday", "Tuesday", "Wednesday") and not by_name["days"].cyclic
    assert by_name["days"].pairs() == [(by_name["days"].token_ids[0], by_name["days"].token_ids[1]),
                                      (by_name["days"].token_ids[1], by_name["days"].token_ids[2])]
    assert by_name["month_prefixes"].items == ("Jan", "Feb")
    assert skipped["days_space"] == "same tokens as days"
    assert "single tokens" in skipped["numbers"]


def test_cyclic_pairs_wrap_around():
    task = hz.OrdinalTask("t", (5, 6, 7), cyclic=True)
    assert task.pairs() == [(5, 6), (6, 7), (7, 5)]


def test_hostile_and_unknown_tokens_are_not_mistaken_for_items():
    tok = word_tokenizer(["<script>", "&amp;", "Monday", "Tuesday"])
    tasks, skipped = hz.ordinal_tasks(tok)
    assert [t.name for t in tasks] == ["days"]  # <unk> (which 'Wednesday' maps to) is never an item
    assert tasks[0].items == ("Monday", "Tuesday")


def test_no_tokenizer_reports_every_list():
    tasks, skipped = hz.ordinal_tasks(None)
    assert tasks == [] and set(skipped) == set(hz.ORDINAL_LISTS)
