"""Losses: registry-wide properties, and each loss against math written out independently."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal, kl_divergence

from common.errors import ConfigError, ShapeMismatchError
from common.losses import (
    LOSSES,
    CombinedLoss,
    CrossEntropyTerm,
    KDTerm,
    LossTerm,
    Reads,
    Registry,
    attention_kl_loss,
    attention_loss,
    build_loss,
    dist_loss,
    dkd_loss,
    gaussian_policy_kl,
    hint_loss,
    kd_ce_loss,
    kd_loss,
    lskd_loss,
    make_regressor,
    parse_loss_spec,
    policy_distillation_loss,
)

B, C = 6, 5


def _attn(b=B, h=2, n=4):
    return torch.randn(b, h, n, n).softmax(-1)


# Inputs for every registered term, with the minimal options it needs: name -> (constructor
# options, student outputs, teacher outputs, batch). A newly registered loss without an
# entry here fails test_every_loss_has_inputs: add one when you add a loss.
def _table(g: torch.Generator) -> dict[str, tuple[dict, dict, dict | None, dict]]:
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    labels = torch.randint(0, C, (B,), generator=g)
    token_mask = torch.ones(B, 4)
    token_mask[:, -1] = 0  # one padded position per sequence
    return {
        "ce": ({}, {"logits": r(B, C)}, None, {"labels": labels}),
        "kd": ({"temperature": 3.0}, {"logits": r(B, C)}, {"logits": r(B, C)}, {}),
        "dkd": ({}, {"logits": r(B, C)}, {"logits": r(B, C)}, {"labels": labels}),
        "hint": (
            {"mask_key": "mask"},
            {"hint": r(B, 4, 3)},
            {"hint": r(B, 4, 3)},
            {"mask": token_mask},
        ),
        "at": (
            {"student_keys": ["hint", "hint2"], "teacher_keys": ["hint", "hint2"]},
            {"hint": r(B, 3, 4, 4), "hint2": r(B, 5, 2, 2)},
            {"hint": r(B, 3, 4, 4), "hint2": r(B, 5, 2, 2)},
            {},
        ),
        "attention_kl": (
            {},
            {"attention": _attn()},
            {"attention": _attn()},
            {"attention_mask": torch.ones(B, 4)},
        ),
        "policy_kl": ({}, {"logits": r(B, C)}, {"logits": r(B, C)}, {}),
        "gaussian_kl": (
            {},
            {"mean": r(B, 2), "log_std": r(2) * 0.3},
            {"mean": r(B, 2), "log_std": r(2) * 0.3},
            {},
        ),
        "dist": ({}, {"logits": r(B, C)}, {"logits": r(B, C)}, {}),
        "lskd": ({}, {"logits": r(B, C)}, {"logits": r(B, C)}, {}),
        # Relational terms: any widths, 4-D maps pooled (sp flattens them).
        "rkd": (
            {"student_key": "hint", "teacher_key": "hint"},
            {"hint": r(B, 3, 4, 4)},
            {"hint": r(B, 7, 2, 2)},
            {},
        ),
        "pkt": ({}, {"logits": r(B, C)}, {"logits": r(B, 2 * C)}, {}),
        "sp": (
            {"student_key": "hint", "teacher_key": "hint"},
            {"hint": r(B, 3, 4, 4)},
            {"hint": r(B, 5, 2, 2)},
            {},
        ),
        # CRD: learned heads to a common width, memory banks of num_data rows read by index.
        "crd": (
            {
                "student_key": "hint",
                "teacher_key": "hint",
                "num_data": 10,
                "student_dim": 3,
                "teacher_dim": 7,
                "feat_dim": 8,
            },
            {"hint": r(B, 3, 4, 4)},
            {"hint": r(B, 7, 2, 2)},
            {"index": torch.randperm(10, generator=g)[:B]},
        ),
    }


def _inputs(name: str, g: torch.Generator):
    return _table(g)[name]


def _term(name: str):
    """The registered term ``name`` built with its table options."""
    opts = _table(torch.Generator().manual_seed(0))[name][0]
    return LOSSES.get(name)(**opts)


_TABLED = sorted(set(LOSSES.names()) & set(_table(torch.Generator())))
_TEACHER_TERMS = [n for n in _TABLED if _term(n).needs_teacher]
# Contrastive terms compare each example with other examples' embeddings through learned
# heads: a student equal to the teacher still pays the InfoNCE cost (see tests/test_crd.py).
_NOT_ZERO_AT_MATCH = {"crd"}


def test_every_loss_has_inputs():
    missing = sorted(set(LOSSES.names()) - set(_table(torch.Generator())))
    assert not missing, f"add an entry to _table in tests/test_losses.py for {missing}"


@pytest.mark.parametrize("name", _TABLED)
def test_registered_loss_is_finite_scalar(name):
    g = torch.Generator().manual_seed(1)
    opts, s, t, batch = _inputs(name, g)
    value = build_loss({name: 1.0}, {name: opts})(s, t, batch).total
    assert value.dim() == 0
    assert torch.isfinite(value)
    assert value.item() >= -1e-6  # every term here is a divergence, a distance or a NLL


@pytest.mark.parametrize("name", [n for n in _TEACHER_TERMS if n not in _NOT_ZERO_AT_MATCH])
def test_registered_loss_is_zero_when_student_equals_teacher(name):
    g = torch.Generator().manual_seed(2)
    opts, _, t, batch = _inputs(name, g)
    s = {k: v.clone() for k, v in t.items()}
    value = build_loss({name: 1.0}, {name: opts})(s, t, batch).total
    assert value.item() == pytest.approx(0.0, abs=1e-5)


@pytest.mark.parametrize("name", _TEACHER_TERMS)
def test_gradients_reach_only_the_student(name):
    g = torch.Generator().manual_seed(3)
    opts, s, t, batch = _inputs(name, g)
    s = {k: v.clone().requires_grad_(True) for k, v in s.items()}
    t = {k: v.clone().requires_grad_(True) for k, v in t.items()}
    build_loss({name: 1.0}, {name: opts})(s, t, batch).total.backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in s.values())
    assert all(v.grad is None for v in t.values())


@pytest.mark.parametrize("name", _TABLED)
def test_term_reads_exactly_the_keys_it_declares(name):
    opts, s, t, batch = _inputs(name, torch.Generator().manual_seed(15))
    term = LOSSES.get(name)(**opts)
    reads = term.reads()
    given = {"student": s, "teacher": t or {}, "batch": batch}
    exact = {}
    for who, mapping in given.items():
        declared = getattr(reads, who)
        assert isinstance(declared, frozenset)
        assert declared <= set(mapping), f"{name} declares {who} keys the table lacks"
        exact[who] = {k: mapping[k] for k in declared}

    def call(outputs):
        # A term that reads nothing from the teacher must run without teacher outputs.
        teacher = outputs["teacher"] if reads.teacher else None
        return term(outputs["student"], teacher, outputs["batch"])

    assert torch.isfinite(call(exact))  # undeclared reads would raise ConfigError here
    for who in given:
        for key in getattr(reads, who):
            partial = {w: dict(m) for w, m in exact.items()}
            del partial[who][key]
            with pytest.raises(ConfigError, match=re.escape(f"needs {who} output {key!r}")):
                call(partial)


def test_reads_follow_the_key_options():
    assert build_loss("hint").reads() == Reads(frozenset({"hint"}), frozenset({"hint"}))
    hint = build_loss(
        "hint", {"hint": {"student_key": "s", "teacher_key": "t", "mask_key": "m"}}
    ).reads()
    assert hint == Reads(frozenset({"s"}), frozenset({"t"}), frozenset({"m"}))
    at = build_loss("at", {"at": {"student_keys": ["a", "b"], "teacher_keys": ["c", "d"]}})
    assert at.reads() == Reads(frozenset({"a", "b"}), frozenset({"c", "d"}))
    assert build_loss("attention_kl", {"attention_kl": {"mask_key": None}}).reads().batch == set()


def test_needs_teacher_comes_from_reads():
    assert build_loss("ce").needs_teacher is False
    assert build_loss("kd=0.5,ce=0.5").needs_teacher is True
    assert CrossEntropyTerm().needs_teacher is False
    assert KDTerm().needs_teacher is True


def test_combined_loss_reads_the_union_of_its_terms():
    loss = build_loss("kd=0.5,ce=0.5,hint=1", {"hint": {"mask_key": "mask"}})
    assert loss.reads() == Reads(
        student=frozenset({"logits", "hint"}),
        teacher=frozenset({"logits", "hint"}),
        batch=frozenset({"labels", "mask"}),
    )
    a = Reads(student=frozenset({"x"}), batch=frozenset({"y"}))
    b = Reads(student=frozenset({"z"}), teacher=frozenset({"x"}))
    assert a | b == Reads(frozenset({"x", "z"}), frozenset({"x"}), frozenset({"y"}))
    assert a | Reads() == a


def test_a_term_without_reads_says_to_declare_them():
    class Undeclared(LossTerm):
        def forward(self, student, teacher, batch):
            return torch.zeros(())

    with pytest.raises(NotImplementedError, match=r"Undeclared must declare what it reads"):
        _ = Undeclared().needs_teacher
    with pytest.raises(NotImplementedError, match="reads"):
        _ = CombinedLoss({"u": Undeclared()}, {"u": 1.0}).needs_teacher


def test_kd_loss_matches_written_out_kl_times_t_squared():
    g = torch.Generator().manual_seed(4)
    s, t = torch.randn(B, C, generator=g), torch.randn(B, C, generator=g)
    T = 4.0
    p_t = torch.softmax(t / T, -1)
    p_s = torch.softmax(s / T, -1)
    expected = (p_t * (p_t.log() - p_s.log())).sum(-1).mean() * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(expected.item(), rel=1e-5)


def test_kd_loss_direction_is_teacher_to_student():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[0.5, 0.3, 0.1]]).log()
    forward = kd_loss(s, t, 1.0).item()
    reverse = kd_loss(t, s, 1.0).item()  # KL(student || teacher) with roles swapped
    p_t, p_s = t.softmax(-1), s.softmax(-1)
    assert forward == pytest.approx((p_t * (p_t / p_s).log()).sum().item(), rel=1e-5)
    assert forward != pytest.approx(reverse, rel=1e-3)


def test_kd_gradient_is_t_times_probability_gap_and_keeps_its_scale():
    # With the T^2 factor, d loss / d s = T * (softmax(s/T) - softmax(t/T)) / batch, which
    # tends to (s - t) / C for large T (zero-mean logits, Hinton et al. sec. 2.1): the
    # gradient scale stays put as T grows, where plain KL's would shrink as 1/T^2.
    g = torch.Generator().manual_seed(5)
    s0, t = torch.randn(2, C, generator=g), torch.randn(2, C, generator=g)
    s0, t = s0 - s0.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    for T in (1.0, 4.0):
        s = s0.clone().requires_grad_(True)
        kd_loss(s, t, T).backward()
        exact = T * (torch.softmax(s0 / T, -1) - torch.softmax(t / T, -1)) / 2
        torch.testing.assert_close(s.grad, exact)
    s = s0.clone().requires_grad_(True)
    kd_loss(s, t, 100.0).backward()
    torch.testing.assert_close(s.grad, (s0 - t) / C / 2, rtol=0.05, atol=1e-3)


def test_kd_ce_loss_is_the_alpha_mix():
    g = torch.Generator().manual_seed(6)
    s, t = torch.randn(B, C, generator=g), torch.randn(B, C, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    mixed = kd_ce_loss(s, t, y, temperature=2.0, alpha=0.3)
    nll = -torch.log_softmax(s, -1)[torch.arange(B), y].mean()
    assert mixed.item() == pytest.approx(
        0.3 * kd_loss(s, t, 2.0).item() + 0.7 * nll.item(), rel=1e-5
    )
    with pytest.raises(ValueError, match="alpha"):
        kd_ce_loss(s, t, y, alpha=1.5)


def test_ce_takes_soft_labels_of_mixed_images():
    g = torch.Generator().manual_seed(8)
    s = torch.randn(B, C, generator=g)
    y, z = torch.randint(0, C, (B,), generator=g), torch.randint(0, C, (B,), generator=g)
    w = torch.rand(B, generator=g)
    ce = CrossEntropyTerm()
    one_hot = F.one_hot(y, C).float()
    hard = ce({"logits": s}, None, {"labels": y})
    torch.testing.assert_close(ce({"logits": s}, None, {"labels": one_hot}), hard)
    # A mixed image's label: its weight on its class, the rest on the partner's class.
    mixed = w[:, None] * one_hot + (1 - w[:, None]) * F.one_hot(z, C).float()
    logp = torch.log_softmax(s, -1)
    by_hand = -(w * logp[torch.arange(B), y] + (1 - w) * logp[torch.arange(B), z]).mean()
    torch.testing.assert_close(ce({"logits": s}, None, {"labels": mixed}), by_hand)
    with pytest.raises(ShapeMismatchError, match="one probability per class"):
        ce({"logits": s}, None, {"labels": torch.rand(B, C + 1)})
    with pytest.raises(ShapeMismatchError, match="one integer class label"):
        dkd_loss(s, torch.randn(B, C, generator=g), mixed)


def test_dkd_matches_decomposition_by_hand():
    g = torch.Generator().manual_seed(7)
    s, t = torch.randn(B, C, generator=g), torch.randn(B, C, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    T, a, b = 2.0, 1.0, 8.0
    total = 0.0
    for i in range(B):
        ps, pt = torch.softmax(s[i] / T, -1), torch.softmax(t[i] / T, -1)
        bs = torch.stack([ps[y[i]], 1 - ps[y[i]]])
        bt = torch.stack([pt[y[i]], 1 - pt[y[i]]])
        tckd = (bt * (bt / bs).log()).sum()
        keep = torch.arange(C) != y[i]
        qs, qt = ps[keep] / ps[keep].sum(), pt[keep] / pt[keep].sum()
        nckd = (qt * (qt / qs).log()).sum()
        total += (a * tckd + b * nckd).item()
    expected = total / B * T * T
    assert dkd_loss(s, t, y, alpha=a, beta=b, temperature=T).item() == pytest.approx(
        expected, rel=1e-4
    )


def test_dkd_is_classic_kd_decomposed():
    # Zhao et al. eq. (2): KD = TCKD + (1 - p_t^target) * NCKD per sample (all at temperature T).
    g = torch.Generator().manual_seed(8)
    s, t = torch.randn(1, C, generator=g), torch.randn(1, C, generator=g)
    y = torch.tensor([2])
    T = 3.0
    pt_target = torch.softmax(t / T, -1)[0, 2].item()
    tckd = dkd_loss(s, t, y, alpha=1.0, beta=0.0, temperature=T).item()
    nckd = dkd_loss(s, t, y, alpha=0.0, beta=1.0, temperature=T).item()
    assert kd_loss(s, t, T).item() == pytest.approx(tckd + (1 - pt_target) * nckd, rel=1e-4)


def test_hint_loss_with_regressor_and_mask():
    torch.manual_seed(9)
    s, t = torch.randn(B, 3, 4, 4), torch.randn(B, 8, 4, 4)
    with pytest.raises(ShapeMismatchError, match="make_regressor"):
        hint_loss(s, t)
    reg = make_regressor(3, 8, "conv")
    expected = ((reg(s) - t) ** 2).mean()
    assert hint_loss(s, t, reg).item() == pytest.approx(expected.item(), rel=1e-6)
    # A pooled regressor pairs a 4x4 student map with a 2x2 teacher map.
    pooled = make_regressor(3, 8, "conv", teacher_size=(2, 2))
    t_small = torch.randn(B, 8, 2, 2)
    expected = ((pooled[1](F.avg_pool2d(s, 2)) - t_small) ** 2).mean()
    assert hint_loss(s, t_small, pooled).item() == pytest.approx(expected.item(), rel=1e-6)
    # Token features: masked positions do not count.
    s2, t2 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    expected = ((s2 - t2) ** 2)[mask.bool()].mean()
    assert hint_loss(s2, t2, mask=mask).item() == pytest.approx(expected.item(), rel=1e-6)


def test_attention_loss_matches_reference_formula():
    torch.manual_seed(10)
    s, t = torch.randn(B, 3, 5, 5), torch.randn(B, 7, 5, 5)  # channel counts may differ

    def at(x):
        a = x.pow(2).mean(1).view(x.size(0), -1)
        return a / a.norm(dim=1, keepdim=True)

    expected = (at(s) - at(t)).pow(2).mean()
    assert attention_loss(s, t).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ShapeMismatchError, match="spatial"):
        attention_loss(s, torch.randn(B, 3, 4, 4))
    # resize=True pools the larger map to the smaller size before normalising.
    big, small = torch.randn(B, 3, 8, 8), torch.randn(B, 5, 4, 4)
    pooled = F.avg_pool2d(big.pow(2).mean(1, keepdim=True), 2).flatten(1)
    pooled = pooled / pooled.norm(dim=1, keepdim=True)
    expected = (pooled - at(small)).pow(2).mean()
    assert attention_loss(big, small, resize=True).item() == pytest.approx(
        expected.item(), rel=1e-5
    )


def test_attention_kl_loss_matches_written_out_kl_with_mask():
    torch.manual_seed(11)
    s, t = _attn(2, 2, 3), _attn(2, 2, 3)
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    kl = (t * (t.log() - s.log())).sum(-1)  # [B, H, Lq]
    expected = kl[0].mean() * (2 * 3) + kl[1, :, :2].sum()
    expected = expected / (2 * 3 + 2 * 2)
    assert attention_kl_loss(s, t, mask).item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ShapeMismatchError, match="average_heads"):
        attention_kl_loss(_attn(2, 4, 3), t)
    # Padded keys carry probability 0 in both maps (as HF returns them): no NaN, and the KL
    # equals the one over real keys only.
    logits = torch.randn(1, 1, 3, 3)
    key_mask = torch.tensor([True, True, False])
    s_pad = logits.masked_fill(~key_mask, float("-inf")).softmax(-1)
    t_pad = torch.randn(1, 1, 3, 3).masked_fill(~key_mask, float("-inf")).softmax(-1)
    real = (t_pad * (t_pad.log() - s_pad.log()))[..., key_mask].sum(-1).mean()
    got = attention_kl_loss(s_pad, t_pad)
    assert torch.isfinite(got) and got.item() == pytest.approx(real.item(), rel=1e-5)
    assert torch.isfinite(attention_kl_loss(_attn(2, 4, 3), t, average_heads=True))


def test_policy_distillation_tempers_only_the_teacher():
    g = torch.Generator().manual_seed(12)
    s, t = torch.randn(B, 4, generator=g), torch.randn(B, 4, generator=g)
    tau = 0.5
    p_t = torch.softmax(t / tau, -1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s, -1))).sum(-1).mean()
    assert policy_distillation_loss(s, t, tau).item() == pytest.approx(expected.item(), rel=1e-5)


def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(13)
    sm, tm = torch.randn(B, 3, generator=g), torch.randn(B, 3, generator=g)
    sl, tl = torch.randn(3, generator=g) * 0.5, torch.randn(B, 3, generator=g) * 0.5
    expected = kl_divergence(Normal(tm, tl.exp()), Normal(sm, sl.exp())).sum(-1).mean()
    assert gaussian_policy_kl(sm, sl, tm, tl).item() == pytest.approx(expected.item(), rel=1e-5)


def test_registry_rejects_duplicates_and_unknown_names():
    reg = Registry("thing")
    reg.add("a", object)
    with pytest.raises(KeyError, match="already registered"):
        reg.add("a", dict)
    with pytest.raises(KeyError, match="already registered"):
        LOSSES.register("kd")(object)
    with pytest.raises(ConfigError, match=r"known: .*kd"):
        build_loss("kd_typo=1")


def test_combined_loss_is_the_weighted_sum_and_reports_each_term():
    g = torch.Generator().manual_seed(14)
    s, t = torch.randn(B, C, generator=g), torch.randn(B, C, generator=g)
    y = torch.randint(0, C, (B,), generator=g)
    loss = build_loss("kd=0.7,ce=0.3", {"kd": {"temperature": 2.0}})
    out = loss({"logits": s}, {"logits": t}, {"labels": y})
    assert set(out.terms) == {"kd", "ce"}
    assert out.total.item() == pytest.approx(kd_ce_loss(s, t, y, 2.0, 0.7).item(), rel=1e-6)
    assert set(out.as_floats()) == {"loss", "loss/kd", "loss/ce"}
    assert build_loss("ce").needs_teacher is False
    assert loss.needs_teacher is True


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("kd=0.9,ce=0.1", {"kd": 0.9, "ce": 0.1}),
        ("ce", {"ce": 1.0}),
        (" kd = 2 , hint=1e-1 ", {"kd": 2.0, "hint": 0.1}),
    ],
)
def test_parse_loss_spec(spec, expected):
    assert parse_loss_spec(spec) == expected


@pytest.mark.parametrize(
    "spec, match",
    [
        ("", "empty"),
        ("kd=abc", "bad weight"),
        ("kd=1,kd=2", "twice"),
        ("kd=nan", "finite"),
    ],
)
def test_parse_loss_spec_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        parse_loss_spec(spec)


def test_missing_output_key_names_the_adapter_fix():
    with pytest.raises(ConfigError, match="forward adapter returned only: logits"):
        build_loss("hint")({"logits": torch.zeros(1, 2)}, {"logits": torch.zeros(1, 2)}, {})


def test_teacher_with_other_class_count_is_a_clear_error():
    with pytest.raises(ShapeMismatchError, match="class count"):
        kd_loss(torch.zeros(2, 10), torch.zeros(2, 7))


def test_losses_are_finite_for_extreme_logits():
    big = torch.tensor([[1e4, -1e4, 0.0]])
    y = torch.tensor([0])
    assert math.isfinite(kd_loss(big, -big, 1.0).item())
    assert math.isfinite(dkd_loss(big, -big, y).item())
    assert math.isfinite(policy_distillation_loss(big, -big, 0.01).item())
    assert F.cross_entropy(big, y).item() == pytest.approx(0.0)


# DIST and LSKD against numpy written from the papers' formulas (float64).


def _np_softmax(z):
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _np_pearson_rows(a, b, eps=1e-8):
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)


def _np_dist(s, t, temperature, beta, gamma):
    ps, pt = _np_softmax(s / temperature), _np_softmax(t / temperature)
    inter = 1 - _np_pearson_rows(ps, pt).mean()  # rows: examples
    intra = 1 - _np_pearson_rows(ps.T, pt.T).mean()  # columns: classes
    return temperature**2 * (beta * inter + gamma * intra)


def _np_lskd(s, t, temperature):
    def zscore(z):  # np.std defaults to the population std (ddof=0)
        return (z - z.mean(axis=-1, keepdims=True)) / (z.std(axis=-1, keepdims=True) + 1e-7)

    ps, pt = _np_softmax(zscore(s) / temperature), _np_softmax(zscore(t) / temperature)
    return temperature**2 * (pt * (np.log(pt) - np.log(ps))).sum(axis=-1).mean()


def _logit_pair(seed=16, shape=(5, 4)):
    rng = np.random.default_rng(seed)
    return rng.normal(size=shape) * 2.0, rng.normal(size=shape) * 3.0


@pytest.mark.parametrize("temperature, beta, gamma", [(1.0, 1.0, 1.0), (2.0, 0.5, 2.0)])
def test_dist_matches_numpy_reference(temperature, beta, gamma):
    s, t = _logit_pair()
    got = dist_loss(
        torch.tensor(s, dtype=torch.float32),
        torch.tensor(t, dtype=torch.float32),
        temperature,
        beta,
        gamma,
    )
    assert got.item() == pytest.approx(_np_dist(s, t, temperature, beta, gamma), rel=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_lskd_matches_numpy_reference(temperature):
    s, t = _logit_pair()
    got = lskd_loss(
        torch.tensor(s, dtype=torch.float32), torch.tensor(t, dtype=torch.float32), temperature
    )
    assert got.item() == pytest.approx(_np_lskd(s, t, temperature), rel=1e-5)


def test_dist_and_lskd_flatten_positions_to_rows():
    s, t = (torch.tensor(x, dtype=torch.float32) for x in _logit_pair(shape=(6, 4)))
    for loss in (dist_loss, lskd_loss):
        flat = loss(s, t).item()
        assert loss(s.view(2, 3, 4), t.view(2, 3, 4)).item() == pytest.approx(flat, rel=1e-6)
        with pytest.raises(ShapeMismatchError, match="class count"):
            loss(s, t[:, :3])


def test_dist_and_lskd_are_zero_for_identical_logits():
    s, _ = _logit_pair()
    z = torch.tensor(s, dtype=torch.float32)
    assert dist_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-5)
    assert lskd_loss(z, z.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_dist_with_zero_weights_is_zero():
    s, t = (torch.tensor(x, dtype=torch.float32) for x in _logit_pair())
    assert dist_loss(s, t, 2.0, beta=0.0, gamma=0.0).item() == 0.0


def test_dist_weights_split_inter_and_intra():
    s, t = (torch.tensor(x, dtype=torch.float32) for x in _logit_pair())
    inter = dist_loss(s, t, beta=1.0, gamma=0.0).item()
    intra = dist_loss(s, t, beta=0.0, gamma=1.0).item()
    assert dist_loss(s, t, beta=0.3, gamma=2.0).item() == pytest.approx(
        0.3 * inter + 2.0 * intra, rel=1e-6
    )


def test_lskd_ignores_each_vectors_shift_and_scale():
    s, t = (torch.tensor(x, dtype=torch.float32) for x in _logit_pair())
    g = torch.Generator().manual_seed(17)

    def move(z):  # a positive scale and a shift of its own for every row
        return z * (torch.rand(5, 1, generator=g) * 4 + 0.25) + torch.randn(5, 1, generator=g) * 10

    base = lskd_loss(s, t, 3.0).item()
    moved = lskd_loss(move(s), move(t), 3.0).item()
    assert moved == pytest.approx(base, rel=1e-5)
    # Plain KD is not invariant: scaling the student's logits changes it.
    assert kd_loss(s * 3.0, t, 3.0).item() != pytest.approx(kd_loss(s, t, 3.0).item(), rel=1e-2)


def test_dist_and_lskd_grad_student_only_and_finite_for_constant_rows():
    s, t = (torch.tensor(x, dtype=torch.float32) for x in _logit_pair())
    s[0] = 0.0  # a constant row: zero centred vector / zero std
    for loss in (dist_loss, lskd_loss):
        student = s.clone().requires_grad_(True)
        teacher = t.clone().requires_grad_(True)
        value = loss(student, teacher)
        value.backward()
        assert torch.isfinite(value)
        assert student.grad is not None and torch.isfinite(student.grad).all()
        assert student.grad.abs().sum() > 0
        assert teacher.grad is None


@pytest.mark.parametrize(
    "name, options, match",
    [
        ("dist", {"temperature": 0.0}, "temperature must be a number > 0"),
        ("dist", {"temperature": -1.0}, "temperature"),
        ("dist", {"temperature": float("inf")}, "temperature"),
        ("dist", {"beta": -0.5}, "beta must be a number >= 0, e.g. 1.0"),
        ("dist", {"gamma": float("nan")}, "gamma"),
        ("lskd", {"temperature": 0.0}, "temperature must be a number > 0, e.g. 2.0"),
        ("lskd", {"temperature": float("nan")}, "temperature"),
    ],
)
def test_dist_and_lskd_reject_bad_options(name, options, match):
    with pytest.raises(ConfigError, match=match):
        build_loss(name, {name: options})
    with pytest.raises(ConfigError, match=match):
        LOSSES.get(name)(**options)
    s = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match=match):
        (dist_loss if name == "dist" else lskd_loss)(s, s, **options)


# Relational losses against plain numpy (the papers' formulas, written out loop by loop).


def _np_huber(a, b):
    d = np.abs(a - b)
    return float(np.mean(np.where(d < 1.0, 0.5 * d**2, d - 0.5)))


def _np_rkd_distance(s, t):
    def norm_dist(e):
        n = len(e)
        d = np.array([[np.linalg.norm(e[i] - e[j]) for j in range(n)] for i in range(n)])
        return d / d[~np.eye(n, dtype=bool)].mean()

    return _np_huber(norm_dist(s), norm_dist(t))


def _np_rkd_angle(s, t):
    def cosines(e):
        n, out = len(e), []
        for j in range(n):
            for i in range(n):
                for k in range(n):
                    u, v = e[i] - e[j], e[k] - e[j]
                    nu, nv = np.linalg.norm(u), np.linalg.norm(v)
                    u = u / max(nu, 1e-12)
                    v = v / max(nv, 1e-12)
                    out.append(float(u @ v))
        return np.array(out)

    return _np_huber(cosines(s), cosines(t))


def _np_pkt(s, t, eps=1e-7):
    def cond(e):
        e = e / np.linalg.norm(e, axis=1, keepdims=True)
        sim = (e @ e.T + 1) / 2
        return sim / sim.sum(1, keepdims=True)

    p, q = cond(s), cond(t)
    return float((q * np.log((q + eps) / (p + eps))).sum())


def _np_sp(s, t):
    def gram(e):
        g = e @ e.T
        return g / np.linalg.norm(g, axis=1, keepdims=True)

    return float(((gram(s) - gram(t)) ** 2).sum() / len(s) ** 2)


def test_relational_losses_match_numpy_references():
    from common.losses import pkt_loss, rkd_angle_loss, rkd_distance_loss, sp_loss

    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(6, 5, generator=g), torch.randn(6, 9, generator=g)
    sn, tn = s.double().numpy(), t.double().numpy()
    assert rkd_distance_loss(s, t).item() == pytest.approx(_np_rkd_distance(sn, tn), rel=1e-4)
    assert rkd_angle_loss(s, t).item() == pytest.approx(_np_rkd_angle(sn, tn), rel=1e-4)
    assert pkt_loss(s, t).item() == pytest.approx(_np_pkt(sn, tn), rel=1e-4)
    assert sp_loss(s, t).item() == pytest.approx(_np_sp(sn, tn), rel=1e-4)
    # 4-D maps: rkd/pkt pool them to [B, C], sp flattens them.
    maps = torch.randn(6, 3, 2, 2, generator=g)
    pooled = maps.mean(dim=(2, 3)).double().numpy()
    assert pkt_loss(maps, t).item() == pytest.approx(_np_pkt(pooled, tn), rel=1e-4)
    flat = maps.reshape(6, -1).double().numpy()
    assert sp_loss(maps, t).item() == pytest.approx(_np_sp(flat, tn), rel=1e-4)


def test_relational_losses_ignore_what_relations_do_not_see():
    """RKD is invariant to rotating, shifting and scaling an embedding; SP and PKT to a
    rotation of the feature space: a teacher so transformed is matched exactly."""
    from common.losses import pkt_loss, rkd_angle_loss, rkd_distance_loss, sp_loss

    g = torch.Generator().manual_seed(4)
    s = torch.randn(8, 6, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    moved = 3.0 * s @ q + 1.5
    assert rkd_distance_loss(s, moved).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle_loss(s, moved).item() == pytest.approx(0.0, abs=1e-6)
    assert sp_loss(s, s @ q).item() == pytest.approx(0.0, abs=1e-6)
    assert pkt_loss(s, s @ q).item() == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ShapeMismatchError, match="batches need >= 2"):
        rkd_distance_loss(s[:1], s[:1])
