"""`python -m cli` runs the `probe` command line."""

from cli.main import main

main()
