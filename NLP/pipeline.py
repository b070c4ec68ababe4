"""What train_teacher.py and distill.py share: the forward adapter, evaluation, one training
run (common's recipe on text loaders), and size/speed descriptions of a model."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor, nn
from torch.utils.data import DataLoader

from common.cache import CachedTeacherAdapter, ViewOutputCache
from common.errors import ConfigError
from common.losses import CombinedLoss
from common.metrics import (
    classification_metrics,
    count_flops,
    count_parameters,
    model_size_bytes,
    speed_profile,
)
from common.recipe import Recipe
from common.recipe import train as train_model
from common.training import ForwardAdapter, LoopState, is_main_process
from nlp.data.text import make_loader

MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class Taps:
    """Which internal states the adapter returns besides ``logits``.

    ``hidden``: ``(student layer, teacher layer)`` pairs, 0 = the embeddings' output and
    ``k`` = the output of layer ``k``; returned stacked as ``hidden`` ``[B, L, pairs, D]``
    (the layout ``hint_loss`` masks by token). ``attention``: one ``(student, teacher)`` pair
    of 1-based layers whose attention maps ``[B, heads, L, L]`` are returned as ``attention``.
    """

    hidden: list[tuple[int, int]] = field(default_factory=list)
    attention: tuple[int, int] | None = None


def model_inputs(model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """The batch tensors the model takes, on its device (DistilBERT has no token types)."""
    device = next(model.parameters()).device
    keys = MODEL_INPUTS if getattr(model.config, "type_vocab_size", 0) else MODEL_INPUTS[:2]
    return {k: batch[k].to(device) for k in keys}


def mask_tokens(
    input_ids: Tensor, attention_mask: Tensor, draw: Tensor, p: float, mask_id: int, keep: Tensor
) -> Tensor:
    """``input_ids`` with each real token (``attention_mask`` 1) whose ``draw`` (uniform in
    [0, 1), the ids' shape) is below ``p`` replaced by ``mask_id``; ids in ``keep`` (the
    special tokens: [CLS], [SEP], padding) are never replaced."""
    hit = (draw < p) & attention_mask.bool() & ~torch.isin(input_ids, keep)
    return input_ids.masked_fill(hit, mask_id)


@dataclass(frozen=True)
class TokenNoise:
    """Noisy-student input noise on the student's training batches: each token but the
    special ones becomes ``mask_id`` with probability ``p`` (:func:`mask_tokens`). The
    teacher's outputs, cached or live, stay those of the clean text. The draws come from the
    torch CPU generator, which checkpoints save and restore for every process (as for
    dropout), so a resumed run masks the tokens an uninterrupted one does. Evaluation
    (``model.eval()``) sees clean text."""

    p: float
    mask_id: int
    keep_ids: tuple[int, ...]

    @classmethod
    def for_tokenizer(cls, tokenizer: Any, p: float) -> TokenNoise | None:
        """The noise for this tokenizer's [MASK] and special tokens; None when ``p`` is 0."""
        if not 0 <= p < 1:
            raise ConfigError(f"--mask-tokens {p}: must be in [0, 1), e.g. 0.1")
        if p == 0:
            return None
        if tokenizer.mask_token_id is None:
            raise ConfigError(
                f"--mask-tokens {p}: the student's tokenizer ({type(tokenizer).__name__}) has "
                "no mask token to replace tokens with; drop --mask-tokens"
            )
        return cls(p, int(tokenizer.mask_token_id), tuple(sorted(set(tokenizer.all_special_ids))))

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        ids = batch["input_ids"]
        draw = torch.rand(ids.shape).to(ids.device)
        keep = torch.tensor(self.keep_ids, device=ids.device)
        ids = mask_tokens(
            ids, batch["attention_mask"].to(ids.device), draw, self.p, self.mask_id, keep
        )
        return {**batch, "input_ids": ids}


class TextAdapter:
    """Runs a Hugging Face sequence classifier on a dict batch; returns ``logits`` and the
    states :class:`Taps` asks for (the teacher's side of each pair for the teacher).
    ``noise``: applied to the student's batches while it trains (:class:`TokenNoise`)."""

    def __init__(self, taps: Taps | None = None, noise: TokenNoise | None = None) -> None:
        self.taps = taps or Taps()
        self.noise = noise

    def _run(self, model: nn.Module, batch: dict[str, Tensor], side: int) -> dict[str, Tensor]:
        hidden = [pair[side] for pair in self.taps.hidden]
        attention = self.taps.attention[side] if self.taps.attention else None
        out = model(
            **model_inputs(model, batch),
            output_hidden_states=bool(hidden),
            output_attentions=attention is not None,
        )
        result = {"logits": out.logits}
        if hidden:
            result["hidden"] = torch.stack([out.hidden_states[k] for k in hidden], dim=2)
        if attention is not None:
            result["attention"] = out.attentions[attention - 1]
        return result

    def student(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if self.noise is not None and model.training:
            batch = self.noise(batch)
        return self._run(model, batch, 0)

    def teacher(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return self._run(model, batch, 1)


class StateCacheAdapter(CachedTeacherAdapter):
    """The teacher's logits, hidden states and attention maps read from a state cache (a
    one-view :class:`~common.cache.ViewOutputCache`, every text's states padded to one fixed
    length, float16, memory-mapped), cut to the batch's length; the student runs as before.
    A text's real tokens get the states a live teacher gives them (padding is masked)."""

    def teacher(self, model: nn.Module, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        if not isinstance(model, ViewOutputCache):
            raise ConfigError("StateCacheAdapter needs the teacher's state cache as the teacher")
        index = batch["index"]
        out = model.lookup(index, torch.zeros_like(index))
        width = batch["input_ids"].shape[1]
        if "hidden" in out:  # [B, length, pairs, D]
            out["hidden"] = out["hidden"][:, :width]
        if "attention" in out:  # [B, heads, length, length]
            out["attention"] = out["attention"][:, :, :width, :width]
        return out


def state_specs(teacher: nn.Module, taps: Taps, length: int, classes: int) -> dict[str, Any]:
    """What a state cache holds per text (shape, stored dtype): float32 logits, and the
    tapped hidden states and attention maps in float16 at ``length`` tokens."""
    cfg = teacher.config
    specs: dict[str, Any] = {"logits": ((classes,), torch.float32)}
    if taps.hidden:
        specs["hidden"] = ((length, len(taps.hidden), cfg.hidden_size), torch.float16)
    if taps.attention is not None:
        specs["attention"] = ((cfg.num_attention_heads, length, length), torch.float16)
    return specs


def state_rows(
    teacher: nn.Module, taps: Taps, split: Dataset, length: int, pad_id: int, batch_size: int = 64
) -> Any:
    """``compute(start, stop)`` for :func:`common.cache.load_or_build_views`: the teacher's
    outputs on texts ``start..stop-1`` of ``split`` (in eval mode), each padded with zeros
    to ``length`` tokens, as ``[texts, 1, ...]``. The texts of a chunk go through the
    teacher shortest first (batches pad to about their own length) and land in row order."""
    adapter = TextAdapter(taps)

    @torch.no_grad()
    def compute(start: int, stop: int) -> dict[str, Tensor]:
        was_training = teacher.training
        teacher.eval()
        rows: dict[str, Tensor] = {}
        chunk = split.select(range(start, stop))
        for batch in make_loader(chunk, batch_size, False, pad_id, by_length=True):
            out = adapter.teacher(teacher, batch)
            pad = length - batch["input_ids"].shape[1]
            if "hidden" in out:
                out["hidden"] = nn.functional.pad(out["hidden"], (0, 0, 0, 0, 0, pad))
            if "attention" in out:
                out["attention"] = nn.functional.pad(out["attention"], (0, pad, 0, pad))
            for k, v in out.items():
                if k not in rows:
                    rows[k] = torch.zeros((stop - start, *v.shape[1:]), dtype=v.dtype)
                rows[k][batch["index"]] = v.cpu()
        teacher.train(was_training)
        return {k: v[:, None] for k, v in rows.items()}

    return compute


@torch.no_grad()
def predict_logits(
    model: nn.Module, loader: DataLoader, desc: str | None = None
) -> tuple[Tensor, Tensor | None]:
    """All logits (and labels, if the split has them) of a loader, in order, in eval mode;
    with a progress bar named ``desc`` if given."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    logits, labels = [], []
    bar = tqdm(loader, desc=desc, unit="batch", disable=desc is None or not is_main_process())
    for batch in bar:
        logits.append(model(**model_inputs(model, batch)).logits.float().cpu())
        if "labels" in batch:
            labels.append(batch["labels"])
    model.train(was_training)
    return torch.cat(logits), (torch.cat(labels) if labels else None)


def run_training(
    model: nn.Module,
    loss: CombinedLoss,
    train: Dataset,
    val: Dataset,
    recipe: Recipe,
    *,
    batch_size: int,
    adapter: ForwardAdapter | None = None,
    teacher: nn.Module | None = None,
    config: dict[str, Any] | None = None,
    teacher_val_logits: Tensor | None = None,
    pad_id: int = 0,
    num_workers: int = 0,
    group_seed: int | None = None,
) -> tuple[nn.Module, LoopState]:
    """Train ``model`` on tokenized splits with common's recipe; returns it (unwrapped, eval
    mode; the best-validation weights with ``recipe.select_best``) and the loop state.
    ``group_seed``: batches of about one length, in an order seeded by it (see
    :class:`~nlp.data.text.LengthGroupedSampler`)."""
    train_loader = make_loader(train, batch_size, True, pad_id, num_workers, group_seed=group_seed)
    val_loader = make_loader(val, 128, False, pad_id)

    def evaluate(m: nn.Module) -> dict[str, float]:
        logits, labels = predict_logits(m, val_loader)
        assert labels is not None
        return classification_metrics(logits, labels, "val", teacher_val_logits, with_macro_f1=True)

    return train_model(
        model, loss, adapter or TextAdapter(), train_loader, evaluate, recipe, teacher, config
    )


def example_batches(
    split: Dataset, batch_size: int = 64, pad_id: int = 0
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Real inputs for timing: one text alone, and ``batch_size`` texts padded together."""
    loader = make_loader(
        split.select(range(min(batch_size, len(split)))), batch_size, False, pad_id
    )
    many = next(iter(loader))
    one = {
        k: v[:1, : int(many["attention_mask"][0].sum())] for k, v in many.items() if v.dim() == 2
    }
    return one, {k: v for k, v in many.items() if k in MODEL_INPUTS}


def _cpu_copy(model: nn.Module) -> nn.Module:
    m = copy.deepcopy(model).cpu().eval()
    # Time every model with the same (fastest) attention kernel, whatever it trained with.
    if hasattr(m, "set_attn_implementation"):
        m.set_attn_implementation("sdpa")
    return m


def speed_report(
    model: nn.Module, one: dict[str, Tensor], many: dict[str, Tensor], repeats: int = 20
) -> dict[str, Any]:
    """CPU batch-1 latency (ms) and batched throughput (texts/s): common.metrics'
    ``speed_profile`` on a CPU copy, so the numbers mean the same on a machine with a GPU."""
    m = _cpu_copy(model)
    keys = MODEL_INPUTS if getattr(m.config, "type_vocab_size", 0) else MODEL_INPUTS[:2]
    pick = lambda batch: {k: batch[k] for k in keys}  # noqa: E731
    profile = speed_profile(m, pick(one), pick(many), unit="texts/s", repeats=repeats)
    return {**profile, "tokens_per_text": int(many["attention_mask"].shape[1])}


def describe_model(model: nn.Module, name: str, one: dict[str, Tensor], **extra: Any) -> dict:
    """Name, parameter count, size and FLOPs of one forward of one text (CPU copy)."""
    m = _cpu_copy(model)
    keys = MODEL_INPUTS if getattr(m.config, "type_vocab_size", 0) else MODEL_INPUTS[:2]
    cfg = m.config
    return {
        "name": name,
        "params": count_parameters(m),
        "size_bytes": model_size_bytes(m),
        "flops": count_flops(m, {k: one[k] for k in keys}),
        "layers": getattr(cfg, "num_hidden_layers", None),
        "hidden": getattr(cfg, "hidden_size", None),
        "heads": getattr(cfg, "num_attention_heads", None),
        **extra,
    }
