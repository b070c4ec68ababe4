"""This domain's record in the domain registry (see :mod:`common.domains`)."""

from common.domains import Domain

DOMAIN = Domain(
    name="nlp",
    teacher_script="nlp.scripts.train_teacher",
    distill_script="nlp.scripts.distill",
    config_keys=("model_type",),
    marker_files=("distillery.json",),
    summary="BERT-family teacher -> small BERT student",
)
