"""Reports: what a batch produced, read back for its user (``results``: outputs merged in input order), and
the cluster admin's HTML report of the ledger (``admin`` renders the page from
:mod:`hpcqueue.ledger.views`, ``figures`` draws its plots as inline SVG)."""
