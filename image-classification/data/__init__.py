"""Datasets and loaders for this domain (files come from `make data`, never from a hub at run time)."""
