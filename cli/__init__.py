"""The `phalanx` command line: a thin dispatcher over the project's packages."""
