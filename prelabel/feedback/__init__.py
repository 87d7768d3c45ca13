"""Closing the loop with the reviewers: their corrections read back, the drafts measured against
them, the confidence calibrated into a threshold, and the next items to review chosen.

Pure modules: ``corrections`` (reading exports), ``metrics`` (agreement per kind), ``calibration``,
``threshold`` (binomial bounds, the auto-accept threshold, the audit estimate), ``sampling``.
``report`` and ``html`` assemble and draw them from the store.
"""
