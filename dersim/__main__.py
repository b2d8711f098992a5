"""`python -m dersim` runs the command line."""

from dersim.cli import main

main()
