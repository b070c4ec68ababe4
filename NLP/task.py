"""What the NLP domain supplies to the shared experiment runner (:mod:`common.experiment`):
load the fine-tuned teacher, the data and the transfer set, complete the hidden-state and
attention options from the models' shapes, serve the teacher's logits from the cache, and
train, test and save one student per method and seed."""

from __future__ import annotations

import math
from functools import cached_property, partial
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import set_seed
from datasets import Dataset
from torch import Tensor

from common.cache import (
    CachedTeacherAdapter,
    TeacherOutputCache,
    ViewOutputCache,
    cache_key,
    compute_outputs,
    default_cache_dir,
    fingerprint,
    load_or_build_views,
    load_or_compute,
    load_or_compute_parts,
)
from common.cli import args_dict
from common.errors import ConfigError
from common.experiment import NOT_SETTINGS, Method, RunOutcome, TeacherPlan
from common.losses import Reads
from common.metrics import classification_metrics
from common.recipe import Recipe
from common.results import accuracy_metrics
from common.stats import proportion_sampling
from common.training import is_main_process, training_budget
from nlp.data.text import (
    IGNORE_LABEL,
    count_truncated,
    first_difference,
    load_dataset,
    make_loader,
    misaligned_rows,
    token_tensors,
    tokenize,
    tokenizer_fingerprint,
    with_labels,
)
from nlp.model_io import load_model_dir, save_model_dir, weights_digest
from nlp.pipeline import (
    MODEL_INPUTS,
    StateCacheAdapter,
    Taps,
    TextAdapter,
    TokenNoise,
    describe_model,
    example_batches,
    predict_logits,
    run_training,
    speed_report,
    state_rows,
    state_specs,
)
from nlp.student_model.bert import build_student, position_offset, spread, student_from_base
from nlp.teacher_model.bert import load_classifier, load_tokenizer, model_classes

LIVE_REASON = (
    "a student with another tokenizer reads other tokens than the teacher's: only the "
    "teacher's logits (one row per text) can be cached for it"
)
OTHER_TOKENIZER = (
    "the student's tokenizer differs from the teacher's (--student-base {base}): "
    "{what} need a token mapping between the two tokenizations, and the two cut {bad:,} of "
    "the {rows:,} training texts differently (row {first}, {example}); use a logit method "
    "(kd, dist, lskd), or a student built from the teacher (--student tiny, small or "
    "truncated, without --student-base)"
)
"""Error for a token-level term (hidden states, attention maps) across tokenizers that do
not cut every training text into the same tokens."""


def _pair(text: str, s_max: int, t_max: int, lowest: int, what: str) -> tuple[int, int]:
    s, sep, t = text.partition(":")
    try:
        pair = (int(s), int(t))
    except ValueError:
        pair = None
    if not sep or pair is None or not (lowest <= pair[0] <= s_max and lowest <= pair[1] <= t_max):
        raise ConfigError(
            f"{what}: bad layer pair {text!r}; write student:teacher with student layers "
            f"{lowest}..{s_max} and teacher layers {lowest}..{t_max}"
        )
    return pair


def method_taps(method: Method, args: Any, s_layers: int, t_layers: int) -> Taps:
    """Layer mapping of the hidden (``hint``) and ``attention_kl`` terms, from the options
    and the model depths."""
    taps = Taps()
    if "hint" in method.weights:
        if tuple(args.hidden_layers) == ("auto",):
            taps.hidden = [(i, spread(i, s_layers, t_layers)) for i in range(1, s_layers + 1)]
        else:
            taps.hidden = [_pair(p, s_layers, t_layers, 0, "hidden") for p in args.hidden_layers]
        if not taps.hidden:
            raise ConfigError("hidden: give at least one --hidden-layers student:teacher pair")
    if "attention_kl" in method.weights:
        taps.attention = (
            (s_layers, t_layers)
            if args.attention_layers == "auto"
            else _pair(args.attention_layers, s_layers, t_layers, 1, "attention")
        )
    return taps


def load_distill_data(args: Any, meta: dict, classes: list[str]) -> tuple[Any, str, Path | None]:
    """The teacher's dataset with its own split (a different one would put its training texts
    in test), the transfer set, the dataset name and the data file."""
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise ConfigError(
            f"{args.teacher} does not say which dataset it was trained on (no distillery.json); "
            "pass --dataset (and --data-file for your own file)"
        )
    same = dataset == meta.get("dataset")
    data_file = args.data_file or (
        Path(meta["data_file"]) if same and meta.get("data_file") else None
    )
    data = load_dataset(
        dataset,
        data_file,
        val_frac=meta.get("val_frac", 0.1) if same else 0.1,
        test_frac=meta.get("test_frac", 0.15) if same else 0.15,
        split_seed=meta.get("split_seed", 0) if same else 0,
        max_train=args.max_train,
        max_test=args.max_test,
        classes=classes,
        transfer=args.transfer,
        max_transfer=args.max_transfer,
        transfer_copies=args.transfer_copies,
        word_dropout=args.word_dropout,
    )
    return data, dataset, data_file


class TextDistillTask:
    """A fine-tuned BERT-family teacher distilled into a small BERT (see
    :class:`common.experiment.DistillTask`)."""

    domain = "nlp"

    def __init__(self, args: Any) -> None:
        self.args = args
        self.teacher_model, self.tokenizer, self.meta = load_model_dir(args.teacher)
        teacher = self.teacher_model
        teacher.requires_grad_(False)
        self.classes = model_classes(teacher)
        self.data, self.dataset, self.data_file = load_distill_data(args, self.meta, self.classes)
        self.max_length = args.max_length or self.meta.get("max_length") or 128
        self.pad_id = self.tokenizer.pad_token_id or 0
        # The teacher reads its own tokens (t_*: its logits, the cache); the student reads its
        # tokenizer's tokens of the same texts in the same rows (train/val/test/transfer), so
        # a row's index finds the teacher's cached logits whatever the student's tokenizer.
        self.t_train, self.t_val, self.t_test = (
            tokenize(s, self.tokenizer, self.max_length)
            for s in (self.data.train, self.data.val, self.data.test)
        )
        transfer = self.data.transfer
        self.t_transfer = (
            None if transfer is None else tokenize(transfer, self.tokenizer, self.max_length)
        )
        self.base_model, self.s_tokenizer, self.same_tokenizer = None, self.tokenizer, True
        if args.student_base is not None:
            self.base_model = load_classifier(args.student_base, classes=self.classes)
            self.s_tokenizer = load_tokenizer(args.student_base)
            positions = getattr(self.base_model.config, "max_position_embeddings", None)
            if (
                positions is not None
                and positions
                - position_offset(getattr(self.base_model.base_model, "embeddings", None))
                < self.max_length
            ):
                raise ConfigError(
                    f"--max-length {self.max_length} is more tokens than the student base "
                    f"{args.student_base} has positions for; pass a smaller --max-length"
                )
            self.same_tokenizer = tokenizer_fingerprint(self.s_tokenizer) == tokenizer_fingerprint(
                self.tokenizer
            )
        self.s_pad_id = self.s_tokenizer.pad_token_id or 0
        self.noise = TokenNoise.for_tokenizer(self.s_tokenizer, args.mask_tokens)
        if self.same_tokenizer:
            self.train, self.val, self.test = self.t_train, self.t_val, self.t_test
            self.transfer = self.t_transfer
        else:
            self.train, self.val, self.test = (
                tokenize(s, self.s_tokenizer, self.max_length)
                for s in (self.data.train, self.data.val, self.data.test)
            )
            self.transfer = (
                None if transfer is None else tokenize(transfer, self.s_tokenizer, self.max_length)
            )
        self.digest = weights_digest(args.teacher)
        set_seed(args.seed_start)  # the probe student's initialisation (it is only timed)
        probe = self._student()
        self.s_layers = probe.config.num_hidden_layers
        self.s_config = probe.config
        self.one, many = example_batches(self.t_val, pad_id=self.pad_id)
        self.s_one, s_many = example_batches(self.val, pad_id=self.s_pad_id)
        # Teacher and student timed side by side, once (a trained student runs as fast).
        self.speed = {
            "teacher": speed_report(teacher, self.one, many),
            "student": speed_report(probe, self.s_one, s_many),
        }
        self.teacher: dict[str, Any] = {}  # with its test scores, from prepare()
        unlabelled = None if transfer is None else torch.full((len(transfer),), IGNORE_LABEL)
        self.inputs = with_labels(self.t_train, self.t_transfer, unlabelled)  # the teacher's
        self.distill_train = with_labels(self.train, self.transfer, unlabelled)  # the student's
        # Every method, the student alone too, gets the steps of one pass over the distilled
        # inputs per epoch (or --steps), so runs of separate invocations stay comparable.
        self.steps = args.steps or args.epochs * math.ceil(len(self.inputs) / args.batch_size)
        self.lr = args.lr or (1e-4 if args.student == "truncated" or args.student_base else 1e-3)
        self.settings = {
            "teacher_sha256": self.digest,
            "lr_used": self.lr,
            "steps": self.steps,
            **args_dict(
                args,
                NOT_SETTINGS,
                only_when_set=(
                    "student_base",
                    "transfer_copies",
                    "word_dropout",
                    "group_by_length",
                    "mask_tokens",
                    "steps",
                    "freeze_embeddings",
                ),
            ),
        }
        if self.base_model is not None:
            self.settings["student_tokenizer"] = tokenizer_fingerprint(self.s_tokenizer)
        # Logits are cached per text; hidden states and attention maps per token, which needs
        # the student's tokens to line up with the teacher's (checked when a method asks).
        states = {"hidden", "attention"} if self.same_tokenizer else set()
        self.cacheable, self.why_not_cached = frozenset({"logits", *states}), LIVE_REASON
        self.cache: TeacherOutputCache | None = None
        self.state_cache: ViewOutputCache | None = None
        self.state_taps, self.state_stats = Taps(), {}
        self._inputs_digest: str | None = None

    def _student(self) -> Any:
        a = self.args
        if self.base_model is None:
            student = build_student(
                a.student, self.teacher_model, self.classes, a.student_init, a.student_layers
            )
        else:
            student = student_from_base(
                self.base_model, self.classes, a.student_layers, a.student_base
            )
        if a.freeze_embeddings:  # left out of the optimizer (it takes trainable ones only)
            student.get_input_embeddings().requires_grad_(False)
        return student

    def produced(self) -> Reads:
        outputs = frozenset({"logits", "hidden", "attention"})
        return Reads(outputs, outputs, frozenset({*MODEL_INPUTS, "labels", "index"}))

    def complete(self, method: Method) -> Method:
        """Widths of the hidden-state projection and head averaging of the attention term
        (options given with --loss-option win)."""
        s_cfg, t_cfg = self.s_config, self.teacher_model.config
        if not self.same_tokenizer:
            self._check_other_tokenizer(method)
        method_taps(method, self.args, self.s_layers, t_cfg.num_hidden_layers)  # checks pairs
        if "hint" in method.weights and s_cfg.hidden_size != t_cfg.hidden_size:
            # Equal widths (a truncated teacher) are compared directly, as DistilBERT does.
            dims = {"student_dim": s_cfg.hidden_size, "teacher_dim": t_cfg.hidden_size}
            method = method.with_options("hint", **{**dims, **method.options.get("hint", {})})
        if "attention_kl" in method.weights:
            heads = s_cfg.num_attention_heads != t_cfg.num_attention_heads
            given = method.options.get("attention_kl", {})
            method = method.with_options("attention_kl", **{"average_heads": heads, **given})
        return method

    def _check_other_tokenizer(self, method: Method) -> None:
        """With a student tokenizer other than the teacher's, the teacher's logits (one row
        per text, cached) can teach; token-level terms only when both tokenizers cut every
        training text into the same tokens (:func:`~nlp.data.text.misaligned_rows`: MPNet's
        and MiniLM's do), so the cached states line up with the student's positions. A live
        teacher is refused (it would be fed the student's token ids)."""
        base = self.args.student_base
        if not method.weights:
            return
        reads = method.build().reads().teacher
        per_token = sorted(reads - {"logits"})
        if per_token:
            bad = self.misaligned_training_rows
            if bad:
                what = " and ".join(
                    {"hidden": "hidden states", "attention": "attention maps"}.get(k, k)
                    for k in per_token
                )
                row = bad[0]
                example = first_difference(
                    self.inputs[row]["input_ids"],
                    self.distill_train[row]["input_ids"],
                    self.tokenizer,
                    self.s_tokenizer,
                )
                raise ConfigError(
                    f"method {method.name!r}: "
                    + OTHER_TOKENIZER.format(
                        base=base,
                        what=what,
                        bad=len(bad),
                        rows=len(self.inputs),
                        first=row,
                        example=example,
                    )
                )
            self.cacheable |= {"hidden", "attention"}
        if reads and not self.args.cache:
            raise ConfigError(
                f"method {method.name!r}: --no-cache with a student tokenizer other than the "
                f"teacher's (--student-base {base}): the teacher's logits come from the "
                "teacher cache, computed on the teacher's own tokens of each text; a live "
                "teacher would be fed the student's tokens. Drop --no-cache."
            )

    @cached_property
    def misaligned_training_rows(self) -> list[int]:
        """Training rows (labelled + transfer) the two tokenizers cut differently."""
        return misaligned_rows(self.inputs, self.distill_train, self.tokenizer, self.s_tokenizer)

    def prepare(self, plans: dict[str, TeacherPlan], cache_keys: frozenset[str]) -> dict:
        """The teacher's evaluation logits and description; its logits on the labelled +
        transfer texts (cached, or a live pass over the transfer texts when the cache is off);
        the teacher's argmax labels the transfer."""
        self._evaluate_teacher()
        if not any(p.needed for p in plans.values()):
            return {}
        if self.args.cache:
            logits, info = self._cached_logits()
            if cache_keys - {"logits"}:
                self._cached_states(cache_keys)
        else:
            logits, info = self._live_transfer_logits(), {}
        if self.transfer is not None:
            assert logits is not None
            labels = logits[len(self.train) :].argmax(-1)
            self.distill_train = with_labels(self.train, self.transfer, labels)  # student's
        return info

    def _evaluate_teacher(self) -> None:
        """The teacher's validation and test logits (cached), and its description for
        results.json. Run from :meth:`prepare`, after every method's options are checked, so
        a bad option fails before this pass."""
        a = self.args
        self.t_val_logits, _ = self._teacher_eval_logits(self.t_val, "val")
        self.t_test_logits, self.test_labels = self._teacher_eval_logits(self.t_test, "test")
        t_acc = classification_metrics(
            self.t_test_logits, self.test_labels, "test", with_macro_f1=True
        )
        self.teacher = {
            **describe_model(
                self.teacher_model,
                str(self.meta.get("base", a.teacher)),
                self.one,
                checkpoint=str(a.teacher),
                sha256=self.digest,
            ),
            "test_accuracy": t_acc["test/accuracy"],
            "score": t_acc["test/accuracy"],
            "metrics": t_acc,
            "speed": self.speed["teacher"],
            "sampling": proportion_sampling(len(self.test)),
        }

    def _cached_logits(self) -> tuple[Tensor, dict]:
        parts = []
        for rows in self._input_parts():
            split = self.inputs if len(rows) == len(self.inputs) else self.inputs.select(rows)
            # Shortest texts first: batches pad to about their own length (on polarity, less
            # than half the 64 tokens a mixed batch pads to). Rows land by index, so the cache
            # is the same as in row order, up to the last float bits.
            loader = make_loader(split, 128, False, self.pad_id, by_length=True)
            compute = partial(
                compute_outputs,
                self.teacher_model,
                TextAdapter().teacher,
                loader,
                len(split),
                ["logits"],
            )
            parts.append((self._teacher_key(["logits"], split, padding="dynamic"), compute))
        self.cache, stats = load_or_compute_parts(self.args.cache_dir or default_cache_dir(), parts)
        if is_main_process():
            print(stats.describe())
        return self.cache.get("logits"), stats.to_dict()

    def _input_parts(self) -> list[range]:
        """Rows of the teacher's inputs whose logits are cached apart: the labelled and
        transfer texts, then each word-dropout copy set, so one more set costs the teacher
        a pass over that set only."""
        start = len(self.inputs) - sum(self.data.copy_sizes)
        parts = [range(start)]
        for size in self.data.copy_sizes:
            parts.append(range(start, start + size))
            start += size
        return [rows for rows in parts if len(rows)]

    def _teacher_eval_logits(self, split: Dataset, name: str) -> tuple[Tensor, Tensor]:
        """The teacher's logits and the labels of an evaluation split, in row order. Every
        distill invocation needs them; with the cache on they are computed once per teacher
        and split (on tweets' 9,300 validation and test texts that pass is ~10 min)."""
        loader = make_loader(split, 128, False, self.pad_id)
        desc = f"teacher on {name}"

        def compute() -> dict[str, Tensor]:
            logits, labels = predict_logits(self.teacher_model, loader, desc=desc)
            assert labels is not None, f"the {name} split has no labels"
            return {"logits": logits, "labels": labels}

        if not self.args.cache:
            live = compute()
            return live["logits"], live["labels"]
        key = self._teacher_key(["logits", "labels"], split, order="rows")
        cache, _ = load_or_compute(self.args.cache_dir or default_cache_dir(), key, compute)
        return cache.get("logits"), cache.get("labels")

    def _teacher_key(
        self, outputs: list[str], split: Dataset | None = None, **preprocessing: Any
    ) -> dict[str, Any]:
        """The cache key of teacher ``outputs`` on the teacher's tokens of ``split`` (default:
        every labelled + transfer text, their fingerprint hashed once for both caches), with
        the ``preprocessing`` a cache adds to the max length and pad id."""
        if split is None or split is self.inputs:
            if self._inputs_digest is None:
                self._inputs_digest = fingerprint(*token_tensors(self.inputs))
            digest = self._inputs_digest
        else:
            digest = fingerprint(*token_tensors(split))
        return cache_key(
            teacher_sha256=self.digest,
            data_sha256=digest,
            preprocessing={"max_length": self.max_length, "pad_id": self.pad_id, **preprocessing},
            outputs=outputs,
        )

    def _cached_states(self, keys: frozenset[str]) -> None:
        """The teacher's hidden states and attention maps at the layers the methods tap (one
        file for all of them), every text padded to the longest text's length: float16,
        built in resumable chunks and memory-mapped (:func:`common.cache.load_or_build_views`
        with one view per text)."""
        weights = {"hint": 1.0} if "hidden" in keys else {}
        if "attention" in keys:
            weights["attention_kl"] = 1.0
        t_layers = self.teacher_model.config.num_hidden_layers
        taps = method_taps(Method("states", weights), self.args, self.s_layers, t_layers)
        length = max(len(ids) for ids in self.inputs["input_ids"])
        specs = state_specs(self.teacher_model, taps, length, len(self.classes))
        attn = "eager" if taps.attention else "sdpa"  # SDPA returns no attention maps
        key = self._teacher_key(
            sorted(specs),
            padding="fixed",
            length=length,
            taps={"hidden": taps.hidden, "attention": taps.attention},
            attention_implementation=attn,
        )
        self.teacher_model.set_attn_implementation(attn)
        self.state_cache, stats = load_or_build_views(
            self.args.cache_dir or default_cache_dir(),
            key,
            examples=len(self.inputs),
            views=1,
            specs=specs,
            compute=state_rows(self.teacher_model, taps, self.inputs, length, self.pad_id),
            chunk=512,
            progress=is_main_process(),
        )
        self.state_taps, self.state_stats = taps, stats.to_dict()
        if is_main_process():
            what = "hit" if stats.hit else "miss (computed)"
            print(
                f"teacher state cache {what}: {stats.examples:,} texts x {length} tokens "
                f"({', '.join(k for k in specs if k != 'logits')}), "
                f"{stats.size_bytes / 2**30:.2f} GiB, {stats.seconds:.1f} s ({stats.path})"
            )

    def _live_transfer_logits(self) -> Tensor | None:
        n_train = len(self.train)
        if len(self.inputs) == n_train:
            return None
        extra: Dataset = self.inputs.select(range(n_train, len(self.inputs)))
        loader = make_loader(extra, 128, False, self.pad_id)
        desc = f"teacher labels {len(extra)} transfer texts"
        logits, _ = predict_logits(self.teacher_model, loader, desc)
        return torch.cat([torch.zeros(n_train, logits.shape[1]), logits])

    def run(
        self, method: Method, seed: int, run_dir: Path, plan: TeacherPlan, settings: dict
    ) -> RunOutcome:
        args = self.args
        student = self._student()
        taps = method_taps(method, args, self.s_layers, self.teacher_model.config.num_hidden_layers)
        if taps.attention is not None:  # SDPA returns no attention maps: eager does
            student.set_attn_implementation("eager")
        self.teacher_model.set_attn_implementation("eager" if taps.attention else "sdpa")
        cached = plan.mode == "cache"
        states = cached and bool(plan.reads - {"logits"})
        if states:
            self._check_state_taps(method, taps)
        served = self.state_cache if states else self.cache
        if cached:
            served.hits = 0  # type: ignore[union-attr]
        recipe = Recipe(
            name=f"{method.name} seed {seed}",
            run_dir=run_dir,
            epochs=0,
            lr=self.lr,
            weight_decay=args.weight_decay,
            max_steps=self.steps,
            max_grad_norm=1.0,
            select_best=args.select_best,
            resume=args.resume,
            checkpoint_every=args.checkpoint_every,
            mixed_precision=args.mixed_precision,
            grad_accum=args.grad_accum,
        )
        adapter = TextAdapter(taps, self.noise)
        if cached:
            adapter = StateCacheAdapter(adapter) if states else CachedTeacherAdapter(adapter)
        # Validated after every pass over the run's own data: the student alone, which loops
        # over the labelled texts alone, keeps its early-stopping point (a fair baseline).
        train_rows = self.distill_train if plan.needed else self.train
        student, state = run_training(
            student,
            method.build(),
            train_rows,
            self.val,
            recipe,
            batch_size=args.batch_size,
            adapter=adapter,
            teacher={"cache": served, "live": self.teacher_model, "none": None}[plan.mode],
            config=settings,
            teacher_val_logits=self.t_val_logits,
            pad_id=self.s_pad_id,
            num_workers=args.num_workers,
            group_seed=seed if args.group_by_length else None,
        )
        test_loader = make_loader(self.test, 128, False, self.s_pad_id)
        s_logits, _ = predict_logits(student, test_loader)
        final = {
            **classification_metrics(
                s_logits, self.test_labels, "test", self.t_test_logits, with_macro_f1=True
            ),
            **state.last_eval,
        }
        model_dir = self._save(student, method, final, run_dir)
        return RunOutcome(
            student=describe_model(
                student,
                self.student_name(),
                self.s_one,
                checkpoint=str(model_dir),
                init=self.student_init(),
                speed=self.speed["student"],
            ),
            metrics=accuracy_metrics(final, len(self.test), state.best),
            budget=training_budget(
                math.ceil(self.steps / math.ceil(len(train_rows) / args.batch_size)),
                state,
                args.batch_size,
                args.grad_accum,
            ),
            extra={
                "train_size": len(train_rows),
                "labelled_train_size": len(self.train),
                "transfer_size": 0
                if not plan.needed or self.transfer is None
                else len(self.transfer),
                "test_size": len(self.test),
                "max_length": self.max_length,
                "truncated_train_texts": count_truncated(self.train, self.max_length),
                "taps": {"hidden": taps.hidden, "attention": taps.attention},
                **({"state_cache": self.state_stats} if states else {}),
                "student_tokenizer": "teacher's"
                if self.base_model is None
                else {
                    "from": str(args.student_base),
                    "same_as_teacher": self.same_tokenizer,
                    "sha256": tokenizer_fingerprint(self.s_tokenizer),
                },
            },
            batches_served=served.hits if cached else None,  # type: ignore[union-attr]
        )

    def _check_state_taps(self, method: Method, taps: Taps) -> None:
        """The state cache holds the layers every method of this invocation taps (they come
        from the run's --hidden-layers and --attention-layers): a method reading it must tap
        the same ones."""
        cached = self.state_taps
        if (taps.hidden and taps.hidden != cached.hidden) or (
            taps.attention is not None and taps.attention != cached.attention
        ):
            raise ConfigError(
                f"method {method.name!r} taps {taps}, the teacher's state cache holds {cached}; "
                "run it in its own invocation"
            )

    def student_name(self) -> str:
        a = self.args
        if self.base_model is None:
            return f"bert-{a.student}"
        layers = f" ({a.student_layers} layers)" if a.student_layers else ""
        return f"{a.student_base}{layers}"

    def student_init(self) -> str:
        a = self.args
        if self.base_model is not None:
            return f"pretrained {a.student_base}"
        return a.student_init if a.student != "truncated" else "teacher-layers"

    def _save(self, student: Any, method: Method, final: dict, run_dir: Path) -> Path:
        meta = self.meta
        s_meta = {
            "role": "student",
            "method": method.name,
            "dataset": self.dataset,
            "data_file": str(self.data_file) if self.data_file else None,
            "classes": self.classes,
            "val_frac": meta.get("val_frac"),
            "test_frac": meta.get("test_frac"),
            "split_seed": meta.get("split_seed"),
            "teacher": str(self.args.teacher),
            "test_accuracy": final["test/accuracy"],
            "test_macro_f1": final["test/macro_f1"],
            "student_base": self.args.student_base,
        }
        return save_model_dir(student, self.s_tokenizer, run_dir / "model", s_meta, self.max_length)

    def summary_extra(self) -> dict[str, Any]:
        return {"transfer_size": 0 if self.transfer is None else len(self.transfer)}
