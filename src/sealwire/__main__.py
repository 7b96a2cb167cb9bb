"""``python -m sealwire`` runs the command line."""

from sealwire.cli.main import run

run()
