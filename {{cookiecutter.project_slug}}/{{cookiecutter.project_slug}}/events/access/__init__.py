"""Who may read what, and for how long: credentials and their fingerprints, topic rules, stream
tickets, revocation (the signals that send access changes, and the recheck of open streams), and
the cache their state lives in.

Imports ``broker`` (access changes travel through it), ``core``, ``conf`` and ``exceptions``.
"""
