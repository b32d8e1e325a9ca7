"""The `pcamlab` command line: a thin adapter, one library call per command."""
