"""`python -m edgecnn` runs the CLI."""

from edgecnn.cli.main import run

if __name__ == "__main__":
    run()
