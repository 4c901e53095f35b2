"""Curriculum v2: every segment's answer is right, the data is reproducible, the tokenizer spells
it exactly, headzoo's probes are all spellable, and the IOI probe templates are held out."""

from __future__ import annotations

import re

import numpy as np
import pytest

import headzoo as hz
from headzoo._curriculum_v2 import (
    _GROUPS,
    _ICL_TASKS,
    TASKS,
    CurriculumV2,
    _icl_pairs,
    _words_of,
    held_out_ioi_templates,
    ioi_frames,
    tokenizer,
    vocabulary,
)
from headzoo._ioi import ioi_lists
from headzoo._ordinal import ORDINAL_LISTS

CUR = CurriculumV2(n_ctx=128, seed=3)
NAMES = set(ioi_lists()["names"])


def _segments(kind: str, n: int = 200) -> list[list[tuple[list[str], str | None]]]:
    return [getattr(CUR, "_" + kind)(np.random.default_rng([7, i])) for i in range(n)]


def _flat(segment: list[tuple[list[str], str | None]]) -> tuple[list[str], list[str | None]]:
    words, labels = [], []
    for ws, label in segment:
        words += ws
        labels += [label] * len(ws)
    return words, labels


def test_batches_are_reproducible_and_resume_exactly() -> None:
    a = CurriculumV2(n_ctx=96, seed=1).batches(4)
    first = [next(a) for _ in range(3)]
    resumed = next(CurriculumV2(n_ctx=96, seed=1).batches(4, start=2))
    assert (first[2][0] == resumed[0]).all() and (first[2][1] == resumed[1]).all()
    other = next(CurriculumV2(n_ctx=96, seed=2).batches(4))
    assert not (first[0][0] == other[0]).all()
    ids, tasks = first[0]
    assert ids.shape == tasks.shape == (4, 96) and (ids[:, 0] == 0).all()
    assert int(ids.max()) < len(vocabulary()) + 2 and int(ids.min()) >= 0
    assert int(tasks.max()) < len(TASKS)


def test_every_task_appears_in_a_batch() -> None:
    _, tasks = next(CurriculumV2(n_ctx=128, seed=0).batches(32))
    assert set(tasks.unique().tolist()) == set(range(len(TASKS)))


def test_the_tokenizer_spells_generated_text_as_the_generator_does() -> None:
    tok = tokenizer()
    assert len(tok) == len(vocabulary()) + 2 and tok.convert_ids_to_tokens([0, 1]) == ["<bos>", "<unk>"]
    for k in range(40):
        ids, _ = CUR.sequence(np.random.default_rng([11, k]))
        text = CUR.text(np.random.default_rng([11, k]))
        enc = tok.encode(text, add_special_tokens=False)
        # the sequence is cut at n_ctx, possibly inside a word: compare the whole words
        assert enc[: len(ids) - 2] == ids[1 : len(ids) - 1]
        assert 1 not in ids  # no unknown token


def test_invented_words_are_spelled_in_several_pieces() -> None:
    tok = tokenizer()
    words = [CUR._invented(np.random.default_rng(i)) for i in range(50)]
    pieces = [tok.tokenize(w) for w in words]
    assert all(len(p) >= 2 and all(q.startswith("##") for q in p[1:]) for p in pieces)


def test_ioi_answer_is_the_name_said_once_and_frames_vary() -> None:
    frames = set()
    for seg in _segments("ioi", 400):
        words, labels = _flat(seg)
        answer = [w for w, la in zip(words, labels) if la == "ioi"]
        assert len(answer) == 1
        prompt = words[: labels.index("ioi")]
        names = [w for w in prompt if w in NAMES]
        assert names.count(answer[0]) == 1 and len(set(names)) == 2
        (s,) = set(names) - {answer[0]}
        assert names.count(s) == 2
        frames.add(" ".join(w for w in prompt if w not in names))
    assert len(frames) > 100  # many frames and fillers, not one template
    orders = {tuple(n for n in _flat(seg)[0] if n in NAMES)[:1] == tuple(
        w for w, la in zip(*_flat(seg)) if la == "ioi") for seg in _segments("ioi", 200)}
    assert orders == {True, False}  # ABBA and BABA


def test_the_builtin_ioi_templates_are_held_out() -> None:
    patterns = []
    for t in held_out_ioi_templates():
        spaced = " ".join(_words_of(re.sub(r"\{(\w+)\}", r" \1 ", t)))
        patterns.append(re.compile("^" + re.sub(r"\b(IO|S|PLACE|OBJECT)\b", r"\\w+", re.escape(spaced)) + "$"))
    for seg in _segments("ioi", 600):
        words, labels = _flat(seg)
        prompt = " ".join(words[: labels.index("ioi")])
        assert not any(p.match(prompt) for p in patterns), prompt
    for intro, action in ioi_frames():
        frame = f"{intro} {action}"
        assert frame not in held_out_ioi_templates()


def test_successor_answer_is_the_next_item_several_tokens_later() -> None:
    far = 0
    for seg in _segments("successor", 300):
        words, labels = _flat(seg)
        i = labels.index("successor")
        answer = words[i]
        item = seg[0][0][-1]
        hits = [(name, items) for name, (items, cyclic) in ORDINAL_LISTS.items()
                if item in items and answer in items
                and (items.index(item) + 1) % len(items) == items.index(answer)]
        assert hits, (item, answer)
        far += i - len(seg[0][0]) >= 4
    assert far > 150  # most items sit beyond any bigram or trigram of the cue


def test_seen_markers_say_whether_the_word_occurred_before() -> None:
    for seg in _segments("seen"):
        words, labels = _flat(seg)
        body = words[2:-1]
        past: set[str] = set()
        for w, marker in zip(body[::2], body[1::2]):
            assert marker == ("seen" if w in past else "new")
            past.add(w)
        assert labels[2:-1][1::2] == ["seen"] * (len(body) // 2)


def test_except_answer_is_the_group_member_missing_from_the_list() -> None:
    for seg in _segments("except"):
        words, labels = _flat(seg)
        answer = words[labels.index("except")]
        (group,) = [g for g in _GROUPS if answer in g]
        shown = [w for w in words[: labels.index("except")] if w in group]
        assert sorted(shown + [answer]) == sorted(group) and answer not in shown


def test_icl_pairs_follow_their_task_and_the_labels_skip_the_first_shots() -> None:
    assert _icl_pairs("capitalize")[0] == ("apple", "Apple") and _icl_pairs("lowercase")[0] == ("Apple", "apple")
    assert ("Monday", "Tuesday") in _icl_pairs("successor") and ("Tuesday", "Monday") in _icl_pairs("predecessor")
    for seg in _segments("icl"):
        xs = [ws[0] for ws, la in seg[0:-1:3]]
        ys = [ws[0] for ws, la in seg[1:-1:3]]
        tasks = [t for t in _ICL_TASKS if all((x, y) in _icl_pairs(t) for x, y in zip(xs, ys))]
        assert tasks, (xs, ys)
        assert [la for _, la in seg[1:-1:3]] == [None, None] + ["icl"] * (len(ys) - 2)


def test_ngram_alphabets_and_induction_spans_are_distinct_whole_words() -> None:
    """Drawn words never include ## pieces and never repeat (a training run once died at step ~350
    when an n-gram alphabet shrank to one word)."""
    for i in range(3000):
        rng = np.random.default_rng([11, i])
        words = CUR._random_words(rng, 6 + i % 30)
        assert len(set(words)) == len(words) == 6 + i % 30
        assert not any(w.startswith("##") for w in words)
        words, _ = _flat(CUR._ngram(rng))
        assert 1 < len(set(words)) <= 6


def test_ngram_labels_only_contexts_seen_before_and_those_are_consistent() -> None:
    for seg in _segments("ngram"):
        words, labels = _flat(seg)
        follows: dict[tuple[str, str], str] = {}
        for i in range(2, len(words)):
            ctx = (words[i - 2], words[i - 1])
            if labels[i] == "ngram":
                assert follows[ctx] == words[i]
            else:
                assert ctx not in follows
            follows[ctx] = words[i]


def test_headzoo_probes_are_all_spellable() -> None:
    """The built-in probes tokenise in the zoo tokenizer: all 16 IOI templates and 100 names,
    the in-context tasks, the ordinal lists, and the shipped text without unknown tokens."""
    from headzoo._icl_tasks import icl_tasks
    from headzoo._ordinal import ordinal_tasks
    from headzoo._vocab import detect_convention, shipped_text

    tok = tokenizer()
    assert detect_convention(tok) == "wordpiece"
    coverage = hz.ioi_prompts(tok).coverage
    assert coverage["templates_kept"] == 16 and coverage["names_kept"] == 100
    assert {t.name for t in icl_tasks(tok)} == {"successor", "capitalize", "first_letter"}
    found = {t.name for t in ordinal_tasks(tok)[0]}
    assert {"days", "months", "number_words", "ordinals", "letters", "numbers"} <= found
    ids = tok.encode(shipped_text(), add_special_tokens=False)
    assert len(ids) > 4000 and 1 not in ids


@pytest.mark.parametrize("kwargs, message", [
    (dict(weights=(1.0, 2.0)), "weights needs 10 values"),
    (dict(n_ctx=16), "n_ctx must be at least 48"),
])
def test_bad_settings_are_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CurriculumV2(**kwargs)
