"""``python -m zeekml`` = the ``zeekml`` command."""
from zeekml.cli import main

main()
