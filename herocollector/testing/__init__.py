"""Test support for herocollector: oracles and generators for its test suite and fuzzers (not used in production)."""
