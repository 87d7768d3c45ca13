"""What a job is made of: its job file, its input lines, its prompt templates.
"""
