"""The augmentation stage of a run: variants of finished items, made by the `augment` library in a
process of its own, each tied to its source and label.
"""
