"""A logger run on disk: its directory, its streams, its trash and its claims.

May import: :mod:`herocollector.errors`, :mod:`herocollector.decode`.
"""
