"""``python -m binderbox``."""

from .cli import main

main()
