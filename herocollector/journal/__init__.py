"""The journal of jobs: the job model and its two backends, SQLite and PostgreSQL.

May import: :mod:`herocollector.errors` only.
"""
