"""``python -m learnstream``."""

from learnstream.cli import main

main()
