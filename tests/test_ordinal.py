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


def test_gpt2_coverage_is_reported_per_list_and_form():
    """The paper's tasks on the real GPT-2 tokenizer: how many items each keeps, with and without a space."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from _gpt2 import gpt2_tokenizer

    tok = gpt2_tokenizer()
    table = hz.task_coverage(tok).set_index("task")
    # facts of GPT-2's vocabulary: 1-200 are single tokens in both forms; half the number words
    # and ordinals need a leading space to be one token
    assert table.loc["numbers", "n_kept"] == 200 and table.loc["numbers_space", "n_kept"] == 200
    assert table.loc["number_words", "n_single"] == 10 and table.loc["number_words_space", "n_kept"] == 20
    assert table.loc["ordinals_space", "n_kept"] == 10 and table.loc["days_space", "n_pairs"] == 7
    numeric = hz.task_coverage(tok, lists="numeric").set_index("task")
    assert numeric.loc["numbers", "n_kept"] == 819 and numeric.loc["numbers_space", "n_kept"] == 505
    tasks, _ = hz.numeric_tasks(tok)
    by_name = {t.name: t for t in tasks}
    for task in tasks:  # every kept token is its item, in its form, and carries the item's value
        form = " {}" if task.name.endswith("_space") else "{}"
        for item, tid in zip(task.items, task.token_ids):
            assert tok.encode(form.format(item), add_special_tokens=False) == [tid]
    nums = by_name["numbers_space"]
    assert all(int(item) == value for item, value in zip(nums.items, nums.values))
    assert nums.successor(nums.token_ids[nums.items.index("41")]) == nums.token_ids[nums.items.index("42")]
    # a gap: whichever numbers GPT-2 splits, the item before a gap has no successor in the task
    last = nums.token_ids[nums.values.index(max(nums.values))]
    assert nums.successor(last) is None
    assert by_name["months_space"].values == tuple(range(1, 13))


def test_values_are_validated_and_drive_pairs():
    task = hz.OrdinalTask("gappy", (10, 11, 13), values=(1, 2, 4))
    assert task.pairs() == [(10, 11)] and task.successor(11) is None
    with pytest.raises(hz.InvalidOptionError, match="one value per token"):
        hz.OrdinalTask("t", (1, 2), values=(1,))
    with pytest.raises(hz.InvalidOptionError, match="increase"):
        hz.OrdinalTask("t", (1, 2), values=(2, 1))
    with pytest.raises(hz.InvalidOptionError, match="'ordinal' or 'numeric'"):
        hz.task_coverage(None, lists="letters")
    assert set(hz.task_coverage(None)["note"]) == {"the model has no tokenizer"}
