"""Few-shot examples: read and checked (`examples`), chosen for each item during a run (`selection`).
"""
