"""NLP metrics and tokenizers: macro-F1 worked out by hand (and against scikit-learn), shown in
the summary and the report; a student with its own tokenizer distils from the teacher's
cached logits, and hidden/attention terms across tokenizers run when both cut every text into
the same tokens and are refused otherwise.

The teacher is the session's one-layer MiniLM (tests/conftest.py); the other tokenizer is a
tiny WordPiece vocabulary (letters, a few words) with a one-layer BERT around it, built
offline here; the aligned one is MiniLM's vocabulary behind four MPNet-style special tokens
(every id shifted, the same cuts).
"""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import NLP_SMALL

from common.errors import ConfigError
from common.metrics import accuracy, classification_metrics, macro_f1
from common.report import render_markdown, render_terminal
from common.results import RunResult, load_results, make_metrics, write_results
from common.stats import summarize
from nlp.data.text import (
    first_difference,
    load_dataset,
    misaligned_rows,
    token_names,
    tokenize,
    tokenizer_fingerprint,
)
from nlp.scripts import distill
from nlp.teacher_model.bert import load_classifier, load_tokenizer

# --------------------------------------------------------------------------- macro-F1


def test_macro_f1_by_hand():
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 0, 1, 0, 1, 2, 2])
    # class 0: TP 3, FP 0, FN 1 -> 6/7; class 1: TP 1, FP 1, FN 1 -> 1/2; class 2: TP 1,
    # FP 1, FN 0 -> 2/3.
    assert macro_f1(preds, labels) == pytest.approx((6 / 7 + 1 / 2 + 2 / 3) / 3)
    # Logits give the same (argmax); a fourth class absent from labels and predictions is
    # not averaged in.
    logits = torch.nn.functional.one_hot(preds, 4).float()
    assert macro_f1(logits, labels) == pytest.approx((6 / 7 + 1 / 2 + 2 / 3) / 3)
    # A class only predicted (never true) counts, with F1 0: (2/3 + 1 + 0) / 3.
    assert macro_f1(torch.tensor([0, 2, 1, 1]), torch.tensor([0, 0, 1, 1])) == pytest.approx(5 / 9)
    # Unbalanced (SMS-like): always "ham" is 90% accurate, but misses every spam.
    ham = torch.tensor([0] * 9 + [1])
    always_ham = torch.zeros(10, dtype=torch.long)
    assert accuracy(torch.nn.functional.one_hot(always_ham, 2).float(), ham) == pytest.approx(0.9)
    assert macro_f1(always_ham, ham) == pytest.approx((18 / 19 + 0.0) / 2)
    assert macro_f1(ham, ham) == 1.0
    with pytest.raises(ValueError, match="3 predictions for 2 labels"):
        macro_f1(torch.tensor([0, 1, 1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        macro_f1(torch.tensor([]), torch.tensor([]))


def test_macro_f1_matches_scikit_learn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    for n, classes in [(50, 2), (200, 3), (37, 5), (8, 6)]:
        labels = torch.randint(0, classes, (n,), generator=g)
        logits = torch.randn(n, classes, generator=g)
        want = metrics.f1_score(labels.numpy(), logits.argmax(-1).numpy(), average="macro")
        assert macro_f1(logits, labels) == pytest.approx(want)


def test_classification_metrics_add_macro_f1_only_when_asked():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    labels = torch.tensor([0, 1, 1])
    plain = classification_metrics(logits, labels, "test")
    assert set(plain) == {"test/accuracy", "test/ece"}  # the image domain's shape, unchanged
    nlp = classification_metrics(logits, labels, "val", logits, with_macro_f1=True)
    assert set(nlp) == {"val/accuracy", "val/ece", "val/agreement", "val/macro_f1"}
    # class 0: TP 1, FP 1 -> 2/3; class 1: TP 1, FN 1 -> 2/3.
    assert nlp["val/macro_f1"] == pytest.approx(2 / 3)


def _run(root, method, seed, acc, f1):
    teacher = {
        "name": "big",
        "params": 1000,
        "score": 0.9,
        "metrics": {"test/accuracy": 0.9, "test/macro_f1": 0.7},
        "sampling": {"kind": "proportion", "n": 600},
    }
    final = {"test/accuracy": acc, "test/macro_f1": f1}
    result = RunResult(
        domain="nlp",
        dataset="sms-spam",
        role="student",
        method=method,
        seed=seed,
        teacher=teacher,
        student={"name": "bert-tiny", "params": 50},
        metrics=make_metrics(final, "test/accuracy", sampling={"kind": "proportion", "n": 600}),
        wall_time_s=1.0,
    )
    write_results(root / method / f"seed-{seed}", result)
    return load_results(root / method / f"seed-{seed}")


def test_summary_and_report_show_macro_f1_beside_the_score(tmp_path):
    runs = [
        _run(tmp_path, "none", 0, 0.86, 0.50),
        _run(tmp_path, "none", 1, 0.88, 0.60),
        _run(tmp_path, "kd", 0, 0.89, 0.66),
    ]
    (group,) = summarize(runs)
    data = group.to_dict()
    none = data["methods"]["none"]
    assert none["metric_means"]["test/macro_f1"] == pytest.approx(0.55)
    assert none["metric_stds"]["test/macro_f1"] == pytest.approx(0.1 / 2**0.5)
    assert data["teacher"]["metrics"]["test/macro_f1"] == 0.7
    assert none["test_interval95"] is not None  # the test set's own interval, as before
    line = "Test macro-F1 (mean ± seed std; every class weighs the same): teacher 0.700; "
    line += "student alone 0.550 ± 0.071; kd 0.660 (1 seed)"
    assert line in render_terminal([group], [])
    assert line + "." in render_markdown([group], [], {})


# --------------------------------------------------------------------------- tokenizers

WORDS = ["the", "a", "an", "and", "of", "to", "is", "it", "this", "that", "film", "movie"]
WORDS += ["story", "good", "bad", "fun", "dull", "not", "but"]


def tiny_bert_with_own_tokenizer(out):
    """A one-layer BERT (hidden 32) around a ~90-token WordPiece vocabulary of letters and a
    few words: another tokenizer than MiniLM's, saved as a checkpoint folder."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    out.mkdir(parents=True)
    letters = "abcdefghijklmnopqrstuvwxyz0123456789"
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *".,!?'-", *letters]
    vocab += [f"##{c}" for c in letters] + WORDS
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(vocab=str(out / "vocab.txt"), do_lower_case=True)
    tokenizer.save_pretrained(out)
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2,
    )  # fmt: skip
    BertForSequenceClassification(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def other_student(tmp_path_factory):
    return tiny_bert_with_own_tokenizer(tmp_path_factory.mktemp("tiny-own-tokenizer") / "base")


@pytest.fixture(scope="module")
def aligned_student(tmp_path_factory):
    """A one-layer BERT (hidden 32) whose tokenizer is MiniLM's vocabulary after four new
    special tokens named as MPNet's (<s>, <pad>, </s>, <mask>): other ids, the same cuts."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    out = tmp_path_factory.mktemp("tiny-aligned-tokenizer") / "base"
    out.mkdir()
    minilm = load_tokenizer("minilm")
    vocab = ["<s>", "<pad>", "</s>", "<mask>"]
    vocab += [t for t, _ in sorted(minilm.get_vocab().items(), key=lambda kv: kv[1])]
    (out / "vocab.txt").write_text("\n".join(vocab) + "\n")
    tokenizer = BertTokenizer(
        vocab=str(out / "vocab.txt"), do_lower_case=True, cls_token="<s>",
        sep_token="</s>", pad_token="<pad>", mask_token="<mask>", unk_token="[UNK]",
    )  # fmt: skip
    tokenizer.save_pretrained(out)
    cfg = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64, num_labels=2, pad_token_id=1,
    )  # fmt: skip
    BertForSequenceClassification(cfg).save_pretrained(out)
    return out


def test_token_names_pair_special_tokens_by_role_and_find_misaligned_rows(
    other_student, aligned_student
):
    minilm, aligned = load_tokenizer("minilm"), load_tokenizer(str(aligned_student))
    other = load_tokenizer(str(other_student))
    ids = minilm("a good film")["input_ids"]
    assert ids == [101, 1037, 2204, 2143, 102]  # BERT uncased's WordPiece ids
    assert aligned("a good film")["input_ids"] == [0, 1041, 2208, 2147, 2]  # 4 later, <s> </s>
    assert token_names(minilm, ids) == ["<cls>", "a", "good", "film", "<sep>"]
    assert token_names(aligned, [0, 1041, 2208, 2147, 2]) == token_names(minilm, ids)
    texts = load_dataset("polarity", max_train=200).train
    a, b, c = (tokenize(texts, t, 32) for t in (minilm, aligned, other))
    assert misaligned_rows(a, b, minilm, aligned) == []
    assert misaligned_rows(b, a, aligned, minilm) == []
    bad = misaligned_rows(a, c, minilm, other)  # letters and a few words: most texts differ
    assert 150 < len(bad) <= 200 and bad == sorted(bad)
    assert all(
        token_names(minilm, a[r]["input_ids"]) != token_names(other, c[r]["input_ids"]) for r in bad
    )
    ids = [minilm("a good dog")["input_ids"], other("a good dog")["input_ids"]]
    where = first_difference(*ids, minilm, other)
    assert (
        where == "token 3: ['a', 'good', 'dog', '<sep>'] against ['a', 'good', 'd', '##o', '##g']"
    )


def test_tokenizer_fingerprint_tells_tokenizers_apart(other_student, nlp_teacher):
    minilm = load_tokenizer("minilm")
    saved = load_tokenizer(str(nlp_teacher))  # the teacher's copy, saved at max_length 32
    saved(["a fine film"], truncation=True, max_length=8)  # a call sets truncation state
    assert tokenizer_fingerprint(saved) == tokenizer_fingerprint(minilm)
    other = load_tokenizer(str(other_student))
    assert tokenizer_fingerprint(other) != tokenizer_fingerprint(minilm)
    assert other("the film")["input_ids"] != minilm("the film")["input_ids"]
    # Its own vocabulary (letters and a few words), not a handful of special tokens.
    assert other.convert_ids_to_tokens(other("the dog")["input_ids"]) == [
        "[CLS]", "the", "d", "##o", "##g", "[SEP]"
    ]  # fmt: skip


def _distill(teacher, out, *extra, cache=None):
    return distill.main(
        [*NLP_SMALL, "--teacher", str(teacher), "--max-transfer", "32", "--epochs", "1",
         "--cache-dir", str(cache or out / "cache"), "--out-dir", str(out / "runs"), *extra]
    )  # fmt: skip


@pytest.mark.parametrize(
    ("method", "named"),
    [
        ("hidden", "hidden states"),
        ("attention", "attention maps"),
        ("kd+hidden", "hidden states"),
        ("kd+attention", "attention maps"),
    ],
)
def test_hidden_and_attention_across_tokenizers_are_refused(
    nlp_teacher, other_student, tmp_path, method, named
):
    with pytest.raises(ConfigError) as err:
        _distill(nlp_teacher, tmp_path, "--methods", method, "--student-base", str(other_student))
    text = str(err.value)
    assert f"method {method!r}: the student's tokenizer differs from the teacher's" in text
    assert f"{named} need a token mapping" in text
    cut = r"the two cut [\d,]+ of the 160 training texts differently \(row \d+, token \d+: \["
    assert re.search(cut + r".+\] against \[.+\]\)", text)
    assert "use a logit method (kd" in text and "a student built from the teacher" in text
    assert not (tmp_path / "runs" / method).exists()  # refused before any training


def test_hidden_and_attention_run_across_tokenizers_that_cut_texts_alike(
    nlp_teacher, aligned_student, tmp_path
):
    _distill(
        nlp_teacher, tmp_path, "--methods", "kd+hidden", "kd+attention",
        "--student-base", str(aligned_student),
    )  # fmt: skip
    for method in ("kd+hidden", "kd+attention"):
        res = load_results(tmp_path / "runs" / method / "seed-0")
        assert res["extra"]["student_tokenizer"]["same_as_teacher"] is False
        # The teacher's states come from the state cache, built on its own tokens.
        assert res["extra"]["teacher_cache"]["mode"] == "cache"
        assert res["extra"]["state_cache"]["examples"] == 160
        assert res["student"]["hidden"] == 32
    hidden = load_results(tmp_path / "runs" / "kd+hidden" / "seed-0")
    assert hidden["extra"]["taps"]["hidden"] == [[1, 1]]


def test_a_live_teacher_across_tokenizers_is_refused(nlp_teacher, other_student, tmp_path):
    with pytest.raises(ConfigError, match=r"--no-cache with a student tokenizer.*Drop --no-cache"):
        _distill(
            nlp_teacher, tmp_path, "--methods", "kd", "--no-cache",
            "--student-base", str(other_student),
        )  # fmt: skip


def test_a_student_with_another_tokenizer_trains_from_cached_logits(
    nlp_teacher, other_student, tmp_path
):
    summary = _distill(
        nlp_teacher, tmp_path, "--methods", "none", "kd", "--student-base", str(other_student)
    )
    kd = load_results(tmp_path / "runs" / "kd" / "seed-0")
    cache = kd["extra"]["teacher_cache"]
    # 128 labelled + 32 transfer texts, scored once by the teacher from its own tokens and
    # served by row index: every one of the 5 steps read the cache, none ran the teacher.
    assert cache["enabled"] and not cache["hit"] and cache["examples"] == 160
    assert cache["batches_served"] == kd["budget"]["steps"] == 5
    assert kd["extra"]["transfer_size"] == 32
    tok = kd["extra"]["student_tokenizer"]
    assert tok["same_as_teacher"] is False and tok["from"] == str(other_student)
    assert kd["student"]["name"] == str(other_student) and kd["student"]["hidden"] == 32
    assert kd["student"]["init"].startswith("pretrained")
    final = kd["metrics"]["final"]
    assert 0.0 <= final["test/macro_f1"] <= 1.0 and "val/macro_f1" in final
    line = (tmp_path / "runs" / "kd" / "seed-0" / "metrics.jsonl").read_text().splitlines()[-1]
    assert "val/macro_f1" in json.loads(line)
    assert "test/macro_f1" in summary["methods"]["none"]["metric_means"]
    assert "test/macro_f1" in summary["teacher"]["metrics"]

    # The saved student reads its own tokens: its folder holds its tokenizer, not MiniLM's.
    model_dir = tmp_path / "runs" / "kd" / "seed-0" / "model"
    saved = load_tokenizer(str(model_dir))
    assert tokenizer_fingerprint(saved) == tokenizer_fingerprint(load_tokenizer(str(other_student)))
    student = load_classifier(str(model_dir))
    enc = saved(["a good film", "dull"], padding=True, return_tensors="pt")
    assert student(**enc).logits.shape == (2, 2)

    # The cache is keyed by the teacher's tokens of the texts, not by the student: a student
    # built from the teacher (MiniLM's tokens) reads the same file.
    _distill(nlp_teacher, tmp_path / "tiny", "--methods", "kd", cache=tmp_path / "cache")
    tiny = load_results(tmp_path / "tiny" / "runs" / "kd" / "seed-0")
    assert tiny["extra"]["teacher_cache"]["hit"]
    assert tiny["extra"]["teacher_cache"]["path"] == cache["path"]
    assert tiny["extra"]["student_tokenizer"] == "teacher's"


def test_a_student_base_with_the_teachers_tokenizer_keeps_hidden_states(
    nlp_teacher, one_layer_base, tmp_path
):
    """MiniLM as the student base under a MiniLM teacher: the same tokens, so the hidden-state
    term is allowed (no false mismatch)."""
    _distill(nlp_teacher, tmp_path, "--methods", "hidden", "--student-base", str(one_layer_base))
    res = load_results(tmp_path / "runs" / "hidden" / "seed-0")
    assert res["extra"]["student_tokenizer"]["same_as_teacher"] is True
    # The same tokens: the teacher's hidden states come from the state cache.
    assert res["extra"]["teacher_cache"]["mode"] == "cache"
    assert res["extra"]["state_cache"]["examples"] == 160
    assert res["extra"]["taps"]["hidden"] == [[1, 1]] and res["student"]["hidden"] == 384


# --------------------------------------------------------------------------- benchmark


def _benchmark(teacher, base, tmp_path, *extra: str):
    from nlp.scripts import benchmark

    return benchmark.main(
        [
            "--teacher", str(teacher), "--student-base", str(base), "--student-layers", "1",
            "--texts", "48", "--batch-size", "16", "--warmup-steps", "1", "--steps", "2",
            "--threads", "1", "--cache-dir", str(tmp_path / "cache"),
            "--out", str(tmp_path / "b.json"), *extra,
        ]
    )  # fmt: skip


def test_benchmark_times_a_student_with_another_tokenizer_from_the_cache_only(
    nlp_teacher, other_student, tmp_path, capsys
):
    out = _benchmark(nlp_teacher, other_student, tmp_path)
    # A live teacher would need its own tokens: only the student alone and the cached KD.
    assert set(out["steps"]) == {"student alone", "kd, warm cache"}
    cache = out["steps"]["kd, warm cache"]["cache"]
    assert cache["examples"] == 48 and not cache["hit"] and cache["size_bytes"] > 0
    assert set(out["ratios"]) == {
        "kd_cached_over_alone",
        "throughput_student_over_teacher",
        "latency_teacher_over_student",
    }
    # The student read its own tokens (its ~90-token vocabulary would fail on the teacher's
    # ids, which go up to 30k): trained and timed.
    assert out["inference"]["student"]["throughput"] > 0
    printed = capsys.readouterr().out
    assert "has its own tokenizer: KD from the cache only" in printed
    assert "cache computed, the teacher's pass: 48 examples" in printed


def test_benchmark_with_the_teachers_tokenizer_times_the_live_teacher_too(
    nlp_teacher, one_layer_base, tmp_path
):
    from common.benchmark import CONFIGS

    out = _benchmark(
        nlp_teacher, one_layer_base, tmp_path, "--max-length", "12", "--group-by-length"
    )
    assert set(out["steps"]) == set(CONFIGS)
    assert out["inference"]["teacher"]["tokens_per_text"] <= 12  # --max-length, not the teacher's
    assert out["ratios"]["kd_live_over_alone"] > 0 and out["ratios"]["kd_cached_over_alone"] > 0
    assert (
        out["inference"]["teacher"]["tokens_per_text"]
        == (out["inference"]["student"]["tokens_per_text"])
    )
