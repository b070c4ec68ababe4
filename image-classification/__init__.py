"""Image classification: ResNet teacher -> small CNN student (importable as `image_classification`)."""
