"""`iopo-fast build-instructions`: TRACE's construction, from simple instructions to instructions with constraints."""
