"""`python -m mmcompress`: the command line."""

from .cli import main

main()
