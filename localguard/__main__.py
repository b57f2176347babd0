"""`python -m localguard` runs the CLI."""

from localguard.cli import main

main()
