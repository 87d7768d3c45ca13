"""What one item becomes: its draft record, its review flags and its confidence.
"""
