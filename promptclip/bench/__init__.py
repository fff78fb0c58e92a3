"""Benchmarks: protocol files → runs (``protocols``), the resumable sweep (``sweep``), reports beside published
numbers (``report``). The package itself imports nothing, so ``promptclip report`` and ``--help`` stay torch-free."""
