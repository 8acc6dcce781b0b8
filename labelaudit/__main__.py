"""`python -m labelaudit`: the same command line as the `labelaudit` console script."""

from labelaudit.cli import app

if __name__ == "__main__":
    app(prog_name="labelaudit")
