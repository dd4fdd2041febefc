"""Decoding ``.seg.zst`` segments: the segment decoder, the records, and the compiled kernels.

May import: :mod:`herocollector.errors` only. The kernels' status codes are in the leaf
module :mod:`herocollector.decode.status`.
"""
