"""CRD: the InfoNCE objective against a loop-by-loop numpy version, the memory banks' momentum
update, negative sampling (seeded, never the anchor), clear errors, and a killed-and-resumed
training run that ends bit-for-bit where an uninterrupted one does (banks included), and the
image CLI filling crd's keys, widths and bank size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from accelerate.utils import set_seed
from conftest import IMAGE_SMALL
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from toy import Adapter, Crash, N, Net, ToyData, make_teacher

from common.callbacks import CheckpointCallback
from common.checkpoint import latest_checkpoint
from common.errors import CheckpointError, ConfigError
from common.losses import (
    LOSSES,
    CRDTerm,
    bank_update,
    build_loss,
    crd_loss,
    init_bank,
    negatives_generator,
    sample_negatives,
)
from common.losses.relational import embed
from common.results import load_results
from common.training import DistillationLoop, LoopConfig, make_accelerator, trainable_parameters
from image_classification.scripts import distill

# --- the pure functions --------------------------------------------------------------------


def _np_crd(s, t, s_bank, t_bank, negatives, tau):
    """Symmetric InfoNCE written out per anchor: -log of the positive's softmax share."""

    def side(anchor, positive, bank):
        total = 0.0
        for i in range(len(anchor)):
            logits = [anchor[i] @ positive[i]] + [anchor[i] @ bank[j] for j in negatives[i]]
            logits = np.array(logits) / tau
            total += -(logits[0] - np.log(np.exp(logits).sum()))
        return total / len(anchor)

    return 0.5 * (side(s, t, t_bank) + side(t, s, s_bank))


def _unit(rng, *shape):
    x = rng.normal(size=shape)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


@pytest.mark.parametrize("tau", [0.07, 0.5])
@pytest.mark.parametrize("bank_rows", [7, 50])  # 9 draws: the whole bank scored / rows gathered
def test_crd_loss_matches_numpy_reference(tau, bank_rows):
    rng = np.random.default_rng(0)
    s, t = _unit(rng, 3, 4), _unit(rng, 3, 4)
    s_bank, t_bank = _unit(rng, bank_rows, 4), _unit(rng, bank_rows, 4)
    negatives = np.array([[1, 2, 6], [0, 0, 5], [3, 4, 1]])
    got = crd_loss(
        *(torch.tensor(x, dtype=torch.float32) for x in (s, t, s_bank, t_bank)),
        torch.tensor(negatives),
        tau,
    )
    assert got.item() == pytest.approx(_np_crd(s, t, s_bank, t_bank, negatives, tau), rel=1e-5)


def test_crd_loss_is_log_k_plus_one_when_nothing_is_told_apart():
    # Every score equal (orthogonal to everything): a uniform softmax over 1 + K candidates.
    s, t, bank = torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(5, 4)
    s[:, 0], t[:, 1], bank[:, 2] = 1.0, 1.0, 1.0
    value = crd_loss(s, t, bank, bank, torch.tensor([[1, 2, 3]] * 2))
    assert value.item() == pytest.approx(np.log(4), rel=1e-6)


def test_crd_loss_gradients_reach_the_embeddings_not_the_banks():
    g = torch.Generator().manual_seed(1)
    s = F.normalize(torch.randn(4, 8, generator=g), dim=1).requires_grad_(True)
    t = F.normalize(torch.randn(4, 8, generator=g), dim=1).requires_grad_(True)
    banks = [F.normalize(torch.randn(6, 8, generator=g), dim=1).requires_grad_(True)]
    banks.append(banks[0].detach().clone().requires_grad_(True))
    crd_loss(s, t, *banks, torch.randint(0, 6, (4, 3), generator=g)).backward()
    assert s.grad.abs().sum() > 0 and t.grad.abs().sum() > 0
    assert banks[0].grad is None and banks[1].grad is None


def test_bank_update_is_the_normalised_momentum_mix():
    g = torch.Generator().manual_seed(2)
    rows, emb = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    got = bank_update(rows, emb, 0.5)
    r, e = rows.double().numpy(), emb.double().numpy()
    mixed = 0.5 * r + 0.5 * e
    expected = mixed / np.linalg.norm(mixed, axis=1, keepdims=True)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-6)
    # momentum 0: the rows become the (normalised) embeddings.
    torch.testing.assert_close(bank_update(rows, emb, 0.0), F.normalize(emb, dim=1))


def test_init_bank_is_seeded_and_on_the_unit_sphere():
    a = init_bank(20, 6, torch.Generator().manual_seed(3))
    b = init_bank(20, 6, torch.Generator().manual_seed(3))
    c = init_bank(20, 6, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(20))


def test_negatives_never_include_the_anchor_and_cover_every_other_row():
    index = torch.tensor([0, 3, 6])
    negatives = sample_negatives(index, 7, 2000, negatives_generator(0, 0))
    assert negatives.shape == (3, 2000)
    for row, own in zip(negatives, index.tolist(), strict=True):
        assert set(row.tolist()) == set(range(7)) - {own}
        # uniform over the other six rows: each about 1/6 of the draws
        counts = torch.bincount(row, minlength=7).float() / len(row)
        assert counts[own] == 0
        assert torch.all((counts[torch.arange(7) != own] - 1 / 6).abs() < 0.04)


def test_negatives_are_a_function_of_seed_and_step():
    index = torch.arange(5)

    def draw(seed, step):
        return sample_negatives(index, 50, 8, negatives_generator(seed, step))

    assert torch.equal(draw(1, 7), draw(1, 7))
    assert not torch.equal(draw(1, 7), draw(1, 8))
    assert not torch.equal(draw(1, 7), draw(2, 7))


# --- the registered term -------------------------------------------------------------------

OPTS = {"num_data": 12, "student_dim": 3, "teacher_dim": 5, "feat_dim": 4, "num_negatives": 6}


def _inputs(seed=5, b=4):
    g = torch.Generator().manual_seed(seed)
    s = {"logits": torch.randn(b, 3, 2, 2, generator=g)}
    t = {"logits": torch.randn(b, 5, generator=g)}
    return s, t, {"index": torch.randperm(12, generator=g)[:b]}


def test_term_is_crd_loss_of_its_heads_banks_and_seeded_negatives():
    torch.manual_seed(0)
    term = CRDTerm(**OPTS, seed=3)
    s, t, batch = _inputs()
    banks = term.student_bank.clone(), term.teacher_bank.clone()
    value = term(s, t, batch)
    with torch.no_grad():
        s_emb = F.normalize(term.student_head(embed(s["logits"])), dim=1)
        t_emb = F.normalize(term.teacher_head(t["logits"]), dim=1)
    negatives = sample_negatives(batch["index"], 12, 6, negatives_generator(3, 0))
    expected = crd_loss(s_emb, t_emb, *banks, negatives, 0.07)
    assert value.item() == pytest.approx(expected.item(), rel=1e-6)
    # The banks were read before this step's update: the update moved the batch's rows only.
    index = batch["index"]
    others = torch.ones(12, dtype=torch.bool)
    others[index] = False
    for bank, old, emb in (
        (term.student_bank, banks[0], s_emb),
        (term.teacher_bank, banks[1], t_emb),
    ):
        torch.testing.assert_close(bank[index], bank_update(old[index], emb, 0.5))
        assert torch.equal(bank[others], old[others])
    assert int(term.draws) == 1


def test_term_updates_nothing_in_eval_mode_and_redraws_the_same_negatives():
    term = CRDTerm(**OPTS).eval()
    s, t, batch = _inputs()
    before = {k: v.clone() for k, v in term.state_dict().items()}
    first, second = term(s, t, batch), term(s, t, batch)
    assert first.item() == second.item()
    for k, v in term.state_dict().items():
        assert torch.equal(v, before[k])


def test_same_seed_same_banks_and_negatives_other_seed_other_banks():
    def run(seed):
        torch.manual_seed(0)  # the heads' initialisation
        term = CRDTerm(**OPTS, seed=seed)
        values = [term(*_inputs(step)).item() for step in range(3)]
        return values, term.state_dict()

    (va, sa), (vb, sb), (vc, sc) = run(1), run(1), run(2)
    assert va == vb and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["student_bank"], sc["student_bank"]) and va != vc


def test_num_negatives_is_capped_at_the_other_rows():
    assert CRDTerm(**{**OPTS, "num_negatives": 4096}).k == 11
    assert CRDTerm(**OPTS).k == 6


def test_term_reads_its_keys_and_the_index():
    term = LOSSES.get("crd")(**OPTS, student_key="stage3", teacher_key="layer4", index_key="i")
    reads = term.reads()
    assert (reads.student, reads.teacher, reads.batch) == ({"stage3"}, {"layer4"}, {"i"})


@pytest.mark.parametrize(
    "batch, match",
    [
        ({"labels": torch.zeros(4)}, r"needs batch output 'index'.*holds only: labels.*yield it"),
        ({"index": torch.tensor([0, 1, 2, 12])}, r"index 12 is outside.*crd\.num_data"),
        ({"index": torch.tensor([0, -1, 2, 3])}, r"index -1 is outside"),
        ({"index": torch.tensor([0.0, 1.0, 2.0, 3.0])}, "one integer per example"),
        ({"index": torch.tensor([0, 1])}, r"shape \(4,\)"),
    ],
)
def test_bad_index_is_refused_with_the_fix(batch, match):
    s, t, _ = _inputs()
    term = CRDTerm(**OPTS)
    before = term.student_bank.clone()
    with pytest.raises(ConfigError, match=match):
        term(s, t, batch)
    assert torch.equal(term.student_bank, before)


@pytest.mark.parametrize(
    "options, match",
    [
        ({"num_data": None}, r"crd needs num_data .*crd\.num_data="),
        ({"student_dim": None}, r"crd needs student_dim"),
        ({"teacher_dim": None}, r"crd needs teacher_dim"),
        ({"num_data": 1}, r"num_data must be an integer >= 2"),
        ({"num_data": 10.5}, r"num_data must be an integer"),
        ({"num_data": "1000"}, r"num_data must be an integer"),
        ({"num_negatives": 0}, r"num_negatives must be an integer >= 1"),
        ({"temperature": 0.0}, r"temperature must be a number > 0"),
        ({"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ({"seed": -1}, r"seed must be an integer >= 0"),
    ],
)
def test_bad_options_are_refused_with_the_fix(options, match):
    opts = {k: v for k, v in {**OPTS, **options}.items() if v is not None}
    with pytest.raises(ConfigError, match=match):
        build_loss("crd", {"crd": opts})


def test_several_processes_are_refused(monkeypatch):
    import common.losses.crd as crd

    monkeypatch.setattr(crd, "_processes", lambda: 2)
    with pytest.raises(ConfigError, match="one process"):
        CRDTerm(**OPTS)(*_inputs())


# --- training, checkpoints and resuming ----------------------------------------------------


class IndexedToyData(ToyData):
    def __getitem__(self, i):
        return {**super().__getitem__(i), "index": i}


CRD_OPTIONS = {
    "student_key": "hint",
    "teacher_key": "hint",
    "num_data": N,
    "student_dim": 16,
    "teacher_dim": 32,
    "feat_dim": 8,
    "num_negatives": 16,
    "temperature": 0.1,
}


def _crd_loop(run_dir, crash_at=None, epochs=2, options=None) -> DistillationLoop:
    teacher = make_teacher()
    set_seed(0)
    student = Net(hidden=16)
    loss = build_loss("ce=0.5,crd=0.5", {"crd": {**CRD_OPTIONS, **(options or {})}})
    optimizer = torch.optim.AdamW(trainable_parameters(student, loss), lr=0.05)
    callbacks = [Crash(crash_at)] if crash_at is not None else []
    callbacks.append(CheckpointCallback(run_dir / "checkpoints", every_steps=4, save_best=False))
    return DistillationLoop(
        student=student,
        loss_fn=loss,
        adapter=Adapter(),
        train_data=DataLoader(IndexedToyData(), batch_size=8, shuffle=True),
        optimizer=optimizer,
        accelerator=make_accelerator(cpu=True),
        teacher=teacher,
        config=LoopConfig(epochs=epochs),
        callbacks=callbacks,
    )


def _state(loop):
    out = {f"student.{k}": v.clone() for k, v in loop.student.state_dict().items()}
    out.update({f"loss.{k}": v.clone() for k, v in loop.unwrapped_loss.state_dict().items()})
    return out


# 8 steps per epoch, a checkpoint every 4: mid-epoch (redo from step 4), and in epoch 2.
@pytest.mark.parametrize("crash_at", [6, 11])
def test_killed_crd_run_resumes_bit_for_bit(tmp_path, crash_at):
    reference = _crd_loop(tmp_path / "ref")
    reference.run()
    expected = _state(reference)
    assert int(expected["loss.terms.crd.draws"]) == 16
    initial = CRDTerm(**CRD_OPTIONS)
    assert not torch.equal(expected["loss.terms.crd.teacher_bank"], initial.teacher_bank)

    run_dir = tmp_path / "crashy"
    with pytest.raises(KeyboardInterrupt):
        _crd_loop(run_dir, crash_at=crash_at).run()
    saved = latest_checkpoint(run_dir / "checkpoints")
    # The banks and the draw count are in the checkpoint, with the heads.
    stored = load_file(str(saved / "loss.safetensors"))
    assert {"terms.crd.student_bank", "terms.crd.teacher_bank", "terms.crd.draws"} <= set(stored)
    assert int(stored["terms.crd.draws"]) == int(saved.name.split("-")[1]) == crash_at // 4 * 4

    resumed = _crd_loop(run_dir)
    resumed.run()
    assert resumed.callbacks[-1].resumed_from == saved
    got = _state(resumed)
    assert set(got) == set(expected)
    for k, v in got.items():
        assert torch.equal(v, expected[k]), f"{k} differs after resuming"


def test_resuming_with_another_bank_size_is_refused(tmp_path):
    _crd_loop(tmp_path, epochs=1).run()
    with pytest.raises(CheckpointError, match="does not fit"):
        _crd_loop(tmp_path, epochs=2, options={"num_data": N + 1}).run()


# --- the image CLI -------------------------------------------------------------------------


def test_image_cli_fills_crd_keys_widths_and_bank_size(image_teacher, tmp_path):
    spec = "kd=0.5,ce=0.5,crd=0.8"
    summary = distill.main(
        [
            *IMAGE_SMALL,
            "--teacher",
            str(image_teacher),
            "--methods",
            "none",
            "--loss",
            spec,
            "--loss-option",
            "crd.num_negatives=32",
            "--epochs",
            "1",
            "--student",
            "tiny",
            "--seed-start",
            "1",
            "--out-dir",
            str(tmp_path),
        ]
    )
    assert 0.0 < summary["methods"][spec]["mean"] <= 1.0
    res = load_results(tmp_path / spec / "seed-1")
    options = res["loss"]["options"]["crd"]
    train_size = res["extra"]["train_size"]
    assert options["num_data"] == train_size and options["num_negatives"] == 32
    assert (options["student_key"], options["teacher_key"]) == ("stage3", "layer4")
    assert options["student_dim"] > 0 and options["teacher_dim"] > options["student_dim"]
    assert options["seed"] == 1  # each run seed its own banks and negatives
    stored = load_file(
        str(latest_checkpoint(tmp_path / spec / "seed-1" / "checkpoints") / "loss.safetensors")
    )
    assert stored["terms.crd.teacher_bank"].shape == (train_size, 128)
    assert int(stored["terms.crd.draws"]) == res["budget"]["steps"]
