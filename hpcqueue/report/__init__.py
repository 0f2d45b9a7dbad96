"""Reports: what a batch produced, read back for its user (``results``: outputs merged in input order)."""
