"""Outputs: path templates, output files, stores (local, S3), run manifests and the pipeline.

May import: :mod:`herocollector.errors`, :mod:`herocollector.decode`, :mod:`herocollector.run`.
"""
