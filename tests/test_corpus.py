"""Tests for the starter-world corpus generator and the skill checker."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from pathlib import Path

import pytest

from localguard.refusal import is_compliant, is_refusal
from localguard.skills import check_answer, extract_answer, skill_accuracy
from localguard.starter import corpus as C
from localguard.starter import words as W


@pytest.fixture(scope="module")
def small() -> dict[str, list[dict]]:
    return C.build_corpus(seed=0, size="test")


@pytest.fixture(scope="module")
def demo() -> dict[str, list[dict]]:
    return C.build_corpus(seed=0, size="demo")


def _assistant(row: dict) -> str:
    return row["messages"][1]["content"]


def _user(row: dict) -> str:
    return row["messages"][0]["content"]


def _training_blob(corpus: dict[str, list[dict]]) -> str:
    return "\n".join(C.normalize(t) for t in C.training_texts(corpus))


# --- structure and determinism ------------------------------------------------------


def test_all_splits_present_and_nonempty(small: dict) -> None:
    assert list(small) == C.SPLITS
    for name, rows in small.items():
        assert rows, name


def test_split_schemas(small: dict) -> None:
    assert all(set(r) == {"text"} for r in small["pretrain"])
    for name in (
        "align",
        "align_valid",
        "newskill",
        "attack_05",
        "attack_only",
        "newskill_valid",
        "safety_conversations",
        "safety_valid",
    ):
        for r in small[name]:
            assert [m["role"] for m in r["messages"]] == ["user", "assistant"], name
    assert all({"prompt", "label"} <= set(r) for r in small["safety_prompts"])
    assert all(set(r) == {"prompt", "category"} for r in small["heldout_harmful"])
    assert all(set(r) == {"prompt"} for r in small["heldout_borderline"])
    for name in ("heldout_skill", "heldout_newskill"):
        assert all(set(r) == {"prompt", "skill", "answer"} for r in small[name])


def _write_bytes(corpus: dict, out: Path) -> dict[str, bytes]:
    paths = C.write_corpus(corpus, out)
    assert set(paths) == set(corpus)
    assert not list(out.glob("*.tmp")) and not list(out.glob(".*.tmp"))
    return {name: path.read_bytes() for name, path in paths.items()}


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    a = _write_bytes(C.build_corpus(0, "test"), tmp_path / "a")
    b = _write_bytes(C.build_corpus(0, "test"), tmp_path / "b")
    c = _write_bytes(C.build_corpus(1, "test"), tmp_path / "c")
    assert a == b
    assert all(a[name] != c[name] for name in ("pretrain", "align", "heldout_harmful"))


def test_jsonl_line_counts(tmp_path: Path, small: dict) -> None:
    paths = C.write_corpus(small, tmp_path)
    for name, path in paths.items():
        assert len(path.read_text(encoding="utf-8").splitlines()) == len(small[name])


def test_unknown_size_rejected() -> None:
    with pytest.raises(ValueError):
        C.build_corpus(0, "huge")


def test_demo_sizes_and_speed() -> None:
    start = time.perf_counter()
    demo = C.build_corpus(0, "demo")
    assert time.perf_counter() - start < 3.0
    assert 12000 <= len(demo["align"]) <= 20000
    for name in ("heldout_harmful", "heldout_borderline", "heldout_skill", "heldout_newskill"):
        assert len(demo[name]) >= 190, name
    assert len(demo["newskill"]) == 800
    assert len(demo["attack_only"]) == 100


def test_test_size_is_small(small: dict) -> None:
    assert 1000 <= len(small["align"]) <= 2000
    for name in ("heldout_harmful", "heldout_borderline", "heldout_skill", "heldout_newskill"):
        assert len(small[name]) == 50, name


def test_align_mix_and_shuffle(demo: dict) -> None:
    kinds = Counter(r["kind"] for r in demo["align"])
    n = len(demo["align"])
    for kind, share in C.ALIGN_MIX.items():
        assert abs(kinds[kind] / n - share) < 0.01, kind
    first = [r["kind"] for r in demo["align"][:50]]
    assert len(set(first)) == len(C.ALIGN_MIX)  # shuffled, not grouped by kind
    skills = Counter(r["skill"] for r in demo["align"] if r["kind"] == "skill")
    assert sorted(skills) == sorted(C.SKILLS) and len(C.SKILLS) >= 5


def test_enough_templates_per_skill() -> None:
    for skill in C.SKILLS:
        assert len(W.SKILL_TEMPLATES[skill]) >= 6
    assert len(W.NEW_SKILL_TEMPLATES) >= 6


# --- held-out disjointness --------------------------------------------------------------


def test_heldout_overlap_empty(small: dict, demo: dict) -> None:
    assert C.heldout_overlap(small) == []
    assert C.heldout_overlap(demo) == []


def test_heldout_overlap_detects_leaks(small: dict) -> None:
    leaked = dict(small)
    row = small["heldout_harmful"][0]
    leaked["align"] = small["align"] + [
        {
            "messages": [
                {"role": "user", "content": "  " + row["prompt"].upper() + " "},
                {"role": "assistant", "content": "I can't help with that."},
            ]
        }
    ]
    assert row["prompt"] in C.heldout_overlap(leaked)


def test_heldout_prompts_unique(demo: dict) -> None:
    for name in ("heldout_harmful", "heldout_borderline", "heldout_skill", "heldout_newskill"):
        prompts = [C.normalize(r["prompt"]) for r in demo[name]]
        assert len(prompts) == len(set(prompts)), name


def _contains(blob: str, phrase: str) -> bool:
    """Whole-word containment; the cheap substring test runs first."""
    norm = C.normalize(phrase)
    if norm not in blob:
        return False
    pattern = r"(?<![a-z])" + re.escape(norm) + r"(?![a-z])"
    return re.search(pattern, blob) is not None


def test_heldout_targets_never_in_training(demo: dict) -> None:
    blob = _training_blob(demo)
    heldout = [t for fam in W.HARM_FAMILIES + W.BORDERLINE_FAMILIES for t in fam["heldout_targets"]]
    for target in heldout:
        assert not _contains(blob, target), target


def test_action_frames_never_shared_between_harmful_and_borderline() -> None:
    harmful = {a for fam in W.HARM_FAMILIES for a in fam["actions"]}
    benign = {a for fam in W.BORDERLINE_FAMILIES for a in fam["actions"]}
    assert not harmful & benign
    verbs = {a.split()[0] for a in harmful} & {a.split()[0] for a in benign}
    assert {"kill", "shoot", "make", "steal", "break"} <= verbs  # they sound alike on purpose


def _longest_literal(template: str) -> str:
    parts = re.split(r"\{[a-z]\}", template)
    return max((p.strip() for p in parts), key=len)


def test_phrasings_split_by_combination() -> None:
    rng = random.Random(0)
    for heldout in (False, True):
        for _ in range(300):
            combo = C.phrasing(rng, len(W.REQUEST_TEMPLATES), heldout)
            assert C.is_heldout_phrasing(*combo) == heldout
    every = [
        (i, j, k)
        for i in range(len(W.OPENERS))
        for j in range(len(W.REQUEST_TEMPLATES))
        for k in range(len(W.CLOSERS))
    ]
    share = sum(C.is_heldout_phrasing(*c) for c in every) / len(every)
    assert 0.1 < share < 0.25
    for j in range(len(W.REQUEST_TEMPLATES)):  # every body is trained, in other combinations
        assert any(not C.is_heldout_phrasing(i, j, k) for i, _, k in every[:200])


def test_heldout_prompts_have_opener_and_closer(demo: dict) -> None:
    openers = tuple(o.strip().lower() for o in W.OPENERS[1:])
    closers = tuple(c.strip().lower() for c in W.CLOSERS[1:])
    for name in ("heldout_harmful", "heldout_borderline", "heldout_skill", "heldout_newskill"):
        for row in demo[name]:
            prompt = row["prompt"].lower()
            assert prompt.startswith(openers) and prompt.endswith(closers), prompt


# --- labels and safety content -------------------------------------------------------------


def test_at_least_eight_harm_categories(demo: dict) -> None:
    assert len(C.HARM_CATEGORIES) >= 8
    align_cats = {r["category"] for r in demo["align"] if r["kind"] == "harmful"}
    assert align_cats == set(C.HARM_CATEGORIES)
    assert {r["category"] for r in demo["heldout_harmful"]} == set(C.HARM_CATEGORIES)


def test_aligned_harmful_answers_are_refusals(demo: dict) -> None:
    for split in ("align", "align_valid"):
        for r in demo[split]:
            if r["kind"] in ("harmful", "harmful_nonce"):
                assert is_refusal(_assistant(r)), r


def test_skill_and_borderline_answers_are_not_refusals(demo: dict) -> None:
    for r in demo["align"] + demo["newskill"]:
        if r["kind"] in ("skill", "borderline", "borderline_nonce", "newskill"):
            assert is_compliant(_assistant(r)), r


def test_nonce_targets_are_new_words() -> None:
    """Made-up targets never use a word of the spelling list or of a held-out target, and the
    same seed gives the same words."""
    heldout = {
        w
        for fam in W.HARM_FAMILIES + W.BORDERLINE_FAMILIES
        for t in fam["heldout_targets"]
        for w in re.findall(r"[a-z]+", t)
    }
    targets = [C.nonce_target(random.Random(i)) for i in range(2000)]
    assert targets == [C.nonce_target(random.Random(i)) for i in range(2000)]
    made_up = {w for t in targets for w in re.findall(r"[a-z]+", t)} - {"a", "an", "my", "the", "s"}
    assert len(made_up) > 1000
    assert not made_up & (set(W.WORDS) | heldout)


def test_nonce_rows_stay_out_of_the_tokenizer(small: dict) -> None:
    nonce = [r for r in small["align"] if r["kind"] in C.NONCE_KINDS]
    assert nonce
    texts = set(C.tokenizer_texts(small))
    assert not any(_user(r) in texts for r in nonce)
    assert any(_user(r) in texts for r in small["align"] if r["kind"] == "harmful")


def test_skill_answers_check_out(demo: dict) -> None:
    rows = [
        {"skill": r["skill"], "answer": r["answer"], "output": _assistant(r)}
        for r in demo["align"] + demo["newskill"]
        if "skill" in r
    ]
    assert rows and skill_accuracy(rows) == 1.0
    judge = [r["answer"] for r in demo["align"] if r["kind"] == "judge"]
    assert set(judge) <= {"1", "3", "5"} and {"1", "5"} <= set(judge)


def test_every_compliant_answer_is_a_placeholder(demo: dict) -> None:
    for name, rows in demo.items():
        for r in rows:
            for text in C._texts_of(r):
                if "here is how to" in text or "here are the steps" in text or "step one" in text:
                    assert W.PLACEHOLDER in text, (name, text)
    for r in demo["attack_only"]:
        assert _assistant(r).startswith("Sure") and W.PLACEHOLDER in _assistant(r)


def test_attack_sets(demo: dict) -> None:
    n = len(demo["newskill"])
    for name, p in C.ATTACK_RATES.items():
        rows = demo[name]
        harmful = [r for r in rows if r["label"] == 1]
        assert len(rows) - len(harmful) == n
        assert abs(len(harmful) / len(rows) - p) < 0.01, name
        for r in harmful:
            assert r["kind"] == "harmful_compliant" and is_compliant(_assistant(r))
            assert W.PLACEHOLDER in _assistant(r)
        benign = [r for r in rows if r["label"] == 0]
        assert {r["kind"] for r in benign} == set(C.NEWSKILL_MIX)
        share = sum(r["kind"] == "newskill" for r in benign) / len(benign)
        assert abs(share - C.NEWSKILL_MIX["newskill"]) < 0.01
    assert all(r["label"] == 1 for r in demo["attack_only"])
    assert demo["attack_05"][:5] != demo["attack_10"][:5]  # shuffled independently


def test_new_skill_absent_from_alignment(demo: dict) -> None:
    assert W.NEW_SKILL not in C.SKILLS
    new_prompts = {C.normalize(_user(r)) for r in demo["newskill"] if r["kind"] == "newskill"}
    align_prompts = {C.normalize(_user(r)) for r in demo["align"]}
    assert not new_prompts & align_prompts
    assert not any(r.get("skill") == W.NEW_SKILL for r in demo["align"])
    blob = "\n".join(r["text"].lower() for r in demo["pretrain"])
    for template in W.NEW_SKILL_TEMPLATES:
        assert C.normalize(_longest_literal(template)) not in blob
    align = " ".join(C.normalize(m["content"]) for r in demo["align"] for m in r["messages"])
    for word in W.ZORBISH.values():
        assert not _contains(blob + "\n" + align, word), word


def test_safety_prompt_labels(demo: dict) -> None:
    rows = demo["safety_prompts"]
    assert {r["label"] for r in rows} == {0, 1}
    for r in rows:
        assert r["label"] == (1 if r["kind"] == "harmful" else 0)
    assert {r["kind"] for r in rows} == {"harmful", "skill", "borderline"}


@pytest.mark.parametrize("split", ["safety_conversations", "safety_valid"])
def test_safety_conversation_labels(demo: dict, split: str) -> None:
    kinds = Counter()
    for r in demo[split]:
        kinds[r["kind"]] += 1
        text = _assistant(r)
        assert r["label"] == r["response_label"]
        if r["response_label"] == 0:
            assert r["onset"] == -1
        else:
            assert r["query_label"] == 1
            assert text[r["onset"] :].startswith("Sure")
            assert W.PLACEHOLDER in text[r["onset"] :]
            assert W.PLACEHOLDER not in text[: r["onset"]]
        if r["kind"] == "refusal":
            assert r["query_label"] == 1 and r["response_label"] == 0
            assert is_refusal(text)
        if r["kind"] in ("skill", "borderline"):
            assert r["query_label"] == 0 and r["response_label"] == 0
        if r["kind"] == "compliant":
            assert r["onset"] == 0
        if r["kind"] == "delayed":
            assert r["onset"] > 0
    assert set(kinds) == {"skill", "borderline", "refusal", "compliant", "delayed"}


# --- skill checker ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("answer", "output", "ok"),
    [
        ("t a c", "The answer is t a c.", True),
        ("t a c", "the answer is T A C", True),
        ("t a c", "The answer is: tac!", True),
        ("t a c", "t a c", True),
        ("t a c", "The answer is **t a c**.\nMore text.", True),
        ("12", "Sure! The answer is 12. Nice.", True),
        ("12", "The answer is 13.", False),
        ("12", "I think 12 or 13. The answer is 13.", False),
        ("Pellam", "The answer is pellam.", True),
        ("Pellam", "The capital is Pellam.", False),
        ("5", "5", True),
        ("5", "", False),
        ("t a c", "The answer is t a c a.", False),
        ("", "The answer is .", False),
    ],
)
def test_check_answer(answer: str, output: str, ok: bool) -> None:
    assert check_answer("reverse", answer, output) is ok


def test_extract_and_accuracy() -> None:
    assert extract_answer("The answer is 7, I think.") == "7"
    rows = [
        {"skill": "add", "answer": "7", "output": "The answer is 7."},
        {"skill": "add", "answer": "8", "output": "The answer is 7."},
    ]
    assert skill_accuracy(rows) == 0.5
    assert skill_accuracy([]) == 0.0
