"""The job loop: leasing items, running them, committing results (`runner`), and running queued jobs
end to end with their outputs (`runs`); the share of a rate limit that several workers send under
(`sharing`), agreed through a `coordinator`.
"""
