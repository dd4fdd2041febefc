"""Test support: runs written by the real data logger, in-process actors, decoder fuzzing.

Importable by the project's tests and by anyone testing code built on herocollector. Its
modules import their heavier dependencies (the data logger, HEROS, servers) themselves, so
import only the module you need: :mod:`~herocollector.testing.runs`,
:mod:`~herocollector.testing.actors`, :mod:`~herocollector.testing.servers`,
:mod:`~herocollector.testing.fleet`, :mod:`~herocollector.testing.fuzz` and
:mod:`~herocollector.testing.numpy_decoder` (the NumPy decoder, kept as the fuzzer's oracle).
"""
