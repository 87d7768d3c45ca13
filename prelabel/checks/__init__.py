"""Checks on an answer, pure: review flags and order (`flags`), confidence (`confidence`, `labelscore`),
template placeholders a weak model copies (`placeholders`).
"""
