"""`iopo-fast build-pairs`: IOPO quadruples built from instructions with constraints (see `pipeline`)."""
