"""The ``herocollector`` command line."""
