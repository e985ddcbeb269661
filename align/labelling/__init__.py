"""People's labels: the store (SQLite), the sources of items to label, annotator accounts, and the statistics.

    store.py     LabelStore: pairs, leases, labels, ratings, backups; read by datasets as `labels: FILE.db`
    sources.py   items to label from a pairs file or from prompts a model answers
    accounts.py  annotator accounts (ALIGN_LABEL_USERS / a users file) and password checks
    stats.py     agreement, annotator quality and the `align labels stats` report

Nothing is imported here: `align.data` reads the store while `sources` reads `align.data`.
"""
