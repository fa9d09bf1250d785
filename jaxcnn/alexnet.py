"""Placeholder: this family is being written."""

MODELS: dict = {}
