"""Token and cost budgets: counting tokens, prices, the budget gate's decisions, a run's budget session
(slices, reservations, settling, slack), and `prelabel plan`.

Pure: no I/O, no clock; the worker carries the decisions out.
"""
