"""The job loop: leasing items, running them, committing results (`runner`), and running queued jobs
end to end with their outputs (`runs`).
"""
