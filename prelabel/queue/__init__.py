"""The queue's front door: submitting job files, reading their input in, and who holds a lease.
"""
