"""The HEROS adapter: the collector actor, the demo logger HERO and the BOSS launcher.

The only subpackage (with :mod:`herocollector.testing`) that imports :mod:`heros`.
"""
