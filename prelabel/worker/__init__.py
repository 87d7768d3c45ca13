"""The job loop: leasing items, handing them to consumers, committing results (`runner`); the live
executor that carries out the items' requests (`live`); store writes in their own thread (`writer`);
running queued jobs end to end with their outputs (`runs`); and the share of a rate limit that several
workers send under (`sharing`), agreed through a `coordinator`.
"""
