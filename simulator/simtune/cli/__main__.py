"""`python -m simtune.cli` runs the CLI (used by tests and subprocess workers)."""

from simtune.cli import main

main()
