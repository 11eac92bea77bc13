"""``python -m ftadvisor``: the same command line as the ``ftadvisor`` script."""

from ftadvisor.cli import main

if __name__ == "__main__":
    main()
