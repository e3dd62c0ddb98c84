"""`python -m recone_lite` runs the CLI."""

from recone_lite.cli import main

main()
