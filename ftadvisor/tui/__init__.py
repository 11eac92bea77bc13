"""The ftadvisor wizard in the terminal (Textual): model → hardware → goal & data → plans → run.

    ftadvisor tui            # or plain `ftadvisor` in a terminal
    python -m ftadvisor.tui

A thin face over the public API (``ftadvisor.recommend``, ``ftadvisor.estimate``, the profiles and
``ftadvisor launch``): no estimation happens here. Importing this package loads nothing; the app
(and textual) load when :func:`main` runs.
"""

from __future__ import annotations


def main() -> None:
    """Run the wizard in this terminal (exits with status 2 and one line of help if textual is missing)."""
    try:
        from ftadvisor.tui.app import FtAdvisorApp
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "textual":
            import sys

            print("error: the wizard needs textual: pip install 'ftadvisor[tui]' (or use `ftadvisor estimate`)",
                  file=sys.stderr)
            raise SystemExit(2) from None
        raise
    FtAdvisorApp().run()
