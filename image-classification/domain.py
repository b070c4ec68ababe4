"""This domain's record in the domain registry (see :mod:`common.domains`)."""

from common.domains import Domain

DOMAIN = Domain(
    name="image-classification",
    teacher_script="image_classification.scripts.train_teacher",
    distill_script="image_classification.scripts.distill",
    config_keys=("family", "image_size"),
    marker_files=(),
    summary="ResNet teacher -> small CNN student",
)
