"""The literature catalogue: the shipped CSV is well formed, names match as documented, and the
agreement table sets the right score beside each catalogued head.

Agreement is checked first on hand-made scores (ground truth by construction: every value and
verdict is known), then end to end on a random GPT-2-shaped model named "gpt2". Random weights
cannot agree with the papers: that test asserts the table is produced and filled, never that
any head agrees.
"""

from __future__ import annotations

import importlib.resources
import math

import pandas as pd
import pytest
from _gpt2 import gpt2_shaped_model

import headzoo as hz
from headzoo._literature import NO_DETECTOR, normalise_model_name, parse_catalogue

COLUMNS = ["model", "layer", "head", "label", "paper_label", "citation", "source", "verified", "note"]

# The IOI circuit of GPT-2 small (Wang et al. 2022), as the authors' code lists it.
IOI = {
    "name_mover": {(9, 9), (10, 0), (9, 6)},
    "backup_name_mover": {(10, 10), (10, 6), (10, 2), (10, 1), (11, 2), (9, 7), (9, 0), (11, 9)},
    "negative_name_mover": {(10, 7), (11, 10)},
    "s_inhibition": {(7, 3), (7, 9), (8, 6), (8, 10)},
    "induction": {(5, 5), (5, 8), (5, 9), (6, 9)},
    "duplicate_token": {(0, 1), (0, 10), (3, 0)},
    "previous_token": {(2, 2), (4, 11)},
}


def test_csv_parses_with_the_right_columns_and_dtypes():
    table = hz.published_heads()
    assert list(table.columns) == COLUMNS
    assert len(table) > 0
    assert table["layer"].dtype == "int64" and table["head"].dtype == "int64"
    assert table["verified"].dtype == bool
    for col in ("model", "label", "paper_label", "citation", "source", "note"):
        assert all(isinstance(v, str) for v in table[col]), col
    assert (table["layer"] >= 0).all() and (table["head"] >= 0).all()
    # one claim per (model, head, label, citation)
    assert not table.duplicated(["model", "layer", "head", "label", "citation"]).any()


HEADER = ",".join(COLUMNS)
GOOD = 'gpt2,9,9,name_mover,Name Mover Head,"Wang et al. 2022, arXiv 2211.00593",code,true,'


@pytest.mark.parametrize(("text", "match"), [
    ("model,layer,head\ngpt2,1,2\n", "columns"),
    (f"{HEADER}\n{GOOD.replace(',9,9,', ',nine,9,')}\n", "layer 'nine'"),
    (f"{HEADER}\n{GOOD.replace(',9,9,', ',9,-1,')}\n", "head '-1'"),
    (f"{HEADER}\n{GOOD.replace('Wang et al. 2022, arXiv 2211.00593', '')}\n", "empty citation"),
    (f"{HEADER}\n{GOOD.replace(',true,', ',yes,')}\n", "verified 'yes'"),
])
def test_a_malformed_catalogue_is_a_typed_error(text, match):
    with pytest.raises(hz.CorruptFileError, match=match):
        parse_catalogue(text)
    assert len(parse_catalogue(f"{HEADER}\n{GOOD}\n")) == 1


def test_the_file_is_package_data_with_its_readme():
    folder = importlib.resources.files("headzoo").joinpath("_data/literature")
    assert folder.joinpath("heads.csv").is_file()
    readme = folder.joinpath("README.md").read_text(encoding="utf-8")
    for col in COLUMNS:
        assert f"`{col}`" in readme, col


def test_every_label_is_a_registered_detector_or_explicitly_none():
    registered = set(hz.list_detectors()["name"])
    labels = set(hz.published_heads()["label"])
    assert labels <= registered | {NO_DETECTOR}, labels - registered


def test_every_row_has_a_citation_with_an_arxiv_id_and_a_source():
    table = hz.published_heads()
    assert (table["citation"].str.strip() != "").all()
    assert table["citation"].str.contains(r"arXiv \d{4}\.\d{4,5}", regex=True).all()
    assert (table["source"].str.strip() != "").all()


def test_unverified_rows_say_so_in_their_note():
    table = hz.published_heads()
    unverified = table[~table["verified"]]
    assert unverified["note"].str.contains("NOT VERIFIED").all()
    assert not table[table["verified"]]["note"].str.contains("NOT VERIFIED").any()


def test_the_ioi_circuit_of_gpt2_small_is_catalogued_exactly():
    rows = hz.published_heads("gpt2")
    ioi = rows[rows["citation"].str.contains("2211.00593")]
    got: dict[str, set[tuple[int, int]]] = {}
    for label, layer, head in zip(ioi["label"], ioi["layer"], ioi["head"], strict=True):
        got.setdefault(label, set()).add((int(layer), int(head)))
    assert got == IOI
    assert sum(len(v) for v in got.values()) == 26  # the paper's 26 heads
    assert ioi["verified"].all()


def test_llama_retrieval_heads_match_the_authors_readme():
    rows = hz.published_heads("yaofu/llama-2-7b-80k")
    assert [(int(a), int(b)) for a, b in zip(rows["layer"], rows["head"], strict=True)] == [(16, 19), (11, 15), (8, 26)]
    assert rows["note"].str.contains("0.94").iloc[0]


@pytest.mark.parametrize("name", ["gpt2", "GPT2", "gpt2-small", "openai-community/gpt2", " gpt2 ", "GPT2-Small"])
def test_gpt2_names_all_match(name):
    assert normalise_model_name(name) == "gpt2"
    assert len(hz.published_heads(name)) == len(hz.published_heads("gpt2")) > 0


def test_organisation_prefix_and_case_are_optional():
    full = hz.published_heads("EleutherAI/pythia-1.4b")
    assert len(full) > 0
    pd.testing.assert_frame_equal(hz.published_heads("pythia-1.4b"), full)
    pd.testing.assert_frame_equal(hz.published_heads("PYTHIA-1.4B"), full)
    pd.testing.assert_frame_equal(hz.published_heads("qwen1.5-14b"), hz.published_heads("Qwen/Qwen1.5-14B"))
    # a near name is another model, not a match
    assert hz.published_heads("gpt2-medium").empty
    assert hz.published_heads("gpt2-shaped").empty
    assert hz.published_heads("Qwen1.5-14B-Chat")["model"].eq("Qwen/Qwen1.5-14B-Chat").all()


def test_an_unknown_model_gives_an_empty_frame_with_the_same_columns():
    table = hz.published_heads("no-such-model")
    assert table.empty and list(table.columns) == COLUMNS


def test_a_model_object_is_matched_by_its_config_name():
    model = gpt2_shaped_model(n_layers=2, n_heads=4, d_model=16, model_name="gpt2")
    pd.testing.assert_frame_equal(hz.published_heads(model), hz.published_heads("gpt2"))


@pytest.mark.parametrize("bad", [3, "", "  ", object(), ["gpt2"]])
def test_bad_model_arguments_raise_a_typed_error(bad):
    with pytest.raises(hz.InvalidOptionError, match="model"):
        hz.published_heads(bad)


def test_the_returned_frame_is_a_copy():
    table = hz.published_heads()
    table.loc[0, "label"] = "changed"
    table.drop(table.index, inplace=True)
    assert hz.published_heads().loc[0, "label"] != "changed"


def _scores(name: str = "gpt2", shape: tuple[int, int] = (12, 12)) -> hz.HeadScores:
    """Hand-made scores of a 12 x 12 model: previous_token high on 4.11 only, induction high on
    5.5 and 2.2, copy_suppression run without a threshold; nothing else run."""
    n_layers, n_heads = shape
    rows = []
    for layer in range(n_layers):
        for head in range(n_heads):
            rows.append(("previous_token", layer, head, 0.9 if (layer, head) == (4, 11) else 0.1))
            rows.append(("induction", layer, head, 0.7 if (layer, head) in {(5, 5), (2, 2)} else 0.05))
            rows.append(("copy_suppression", layer, head, 0.99))
    frame = pd.DataFrame(rows, columns=["detector", "layer", "head", "score"])
    meta = {"model": {"name": name, "n_layers": n_layers, "n_heads": n_heads},
            "detectors": {"previous_token": {"threshold": 0.4}, "induction": {"threshold": 0.4},
                          "copy_suppression": {"threshold": None}}}
    return hz.HeadScores(frame, meta)


def test_agreement_on_hand_made_scores():
    scores = _scores()
    before = scores.to_frame()
    table = hz.literature_agreement(scores)
    assert list(table.columns) == ["model", "layer", "head", "label", "paper_label", "citation", "verified",
                                   "headzoo_score", "threshold", "agrees", "headzoo_labels"]
    assert len(table) == len(hz.published_heads("gpt2"))
    assert table["agrees"].dtype == "boolean"
    by = {(r.label, r.layer, r.head): r for r in table.itertuples()}
    r = by[("previous_token", 4, 11)]
    assert r.headzoo_score == pytest.approx(0.9) and r.threshold == 0.4 and bool(r.agrees) is True
    assert r.headzoo_labels == "previous_token"
    r = by[("previous_token", 2, 2)]
    assert r.headzoo_score == pytest.approx(0.1) and bool(r.agrees) is False
    assert r.headzoo_labels == "induction"  # 2.2 passes induction here, not previous_token
    r = by[("induction", 5, 5)]
    assert bool(r.agrees) is True and r.headzoo_labels == "induction"
    r = by[("induction", 6, 9)]
    assert bool(r.agrees) is False and r.headzoo_labels == ""
    # a detector that was not run: no score, no verdict, but the registry's threshold
    r = by[("name_mover", 9, 9)]
    assert math.isnan(r.headzoo_score) and r.agrees is pd.NA
    assert r.threshold == hz.get_detector("name_mover").threshold
    # run, but without a threshold: the score is there, the verdict is not
    r = by[("copy_suppression", 10, 7)]
    assert r.headzoo_score == pytest.approx(0.99) and math.isnan(r.threshold) and r.agrees is pd.NA
    pd.testing.assert_frame_equal(scores.to_frame(), before)


def test_agreement_takes_the_model_name_from_the_argument_over_the_scores():
    scores = _scores(name="my-finetune")
    with pytest.raises(hz.EmptyResultError, match="my-finetune.*gpt2"):
        hz.literature_agreement(scores)
    table = hz.literature_agreement(scores, model="gpt2-small")
    assert len(table) == len(hz.published_heads("gpt2"))


def test_heads_outside_the_model_are_a_typed_error():
    # named gpt2 but 6 x 12: the catalogue's layer-9 name movers cannot be in it
    with pytest.raises(hz.InvalidOptionError, match=r"6 layers x 12 heads.*9\.9"):
        hz.literature_agreement(_scores(shape=(6, 12)))


def test_agreement_on_a_random_gpt2_shaped_model_named_gpt2():
    """End to end on a random 12 x 12 model named "gpt2" (d_model 48, GPT-2's tokenizer).

    Its weights are random, so it cannot agree with the papers: this checks that the table is
    produced, with a score for each catalogued head whose detector was run, and says nothing
    about whether any head agrees.
    """
    model = gpt2_shaped_model(n_layers=12, n_heads=12, d_model=48, model_name="gpt2")
    scores = hz.detect(model, ["previous_token", "induction"], progress=False)
    table = hz.literature_agreement(scores)
    assert len(table) == len(hz.published_heads(model)) > 0
    ran = table["label"].isin(["previous_token", "induction"])
    assert ran.any() and table.loc[ran, "headzoo_score"].notna().all()
    assert table.loc[ran, "agrees"].notna().all()
    assert table.loc[~ran, "headzoo_score"].isna().all() and table.loc[~ran, "agrees"].isna().all()
    expected = scores.matrix("previous_token").loc[4, 11]
    assert table[(table["label"] == "previous_token") & (table["layer"] == 4) & (table["head"] == 11)]["headzoo_score"].item() == expected
