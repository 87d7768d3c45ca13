"""What one item becomes, decided without I/O: the protocol an executor drives an item's work by
(`protocol`), a label item's steps (`item`; an augmentation unit's are in `prelabel.variants.stage`),
its draft record, its review flags and its confidence.
"""
