"""The ftadvisor wizard in the terminal (Textual): model → hardware → goal & data → plans → run.

    ftadvisor tui            # or plain `ftadvisor` in a terminal
    ftadvisor tui -m Qwen/Qwen3-8B -g my-card.yaml    # start with a model and a card (as `estimate` takes them)
    python -m ftadvisor.tui [-m MODEL] [-g GPU]

A thin face over the public API (``ftadvisor.recommend``, ``ftadvisor.estimate``, the profiles and
``ftadvisor launch``): no estimation happens here. Importing this package loads nothing; the app
(and textual) load when :func:`main` runs.
"""

from __future__ import annotations


def main(model: str | None = None, gpu: str | None = None, framework: str | None = None) -> None:
    """Run the wizard in this terminal (exits with status 2 and one line of help if textual is missing).
    ``model`` / ``gpu`` pre-fill those steps and the wizard opens at the first step still open; a bad one
    raises FtAdvisorError (one line naming the field) before anything is drawn."""
    state, start = None, "model"
    if model or gpu or framework:
        from ftadvisor.tui.state import initial_state

        state, start = initial_state(model, gpu, framework)
    try:
        from ftadvisor.tui.app import FtAdvisorApp
    except ModuleNotFoundError as err:
        if err.name and err.name.split(".")[0] == "textual":
            import sys

            print("error: the wizard needs textual: pip install 'ftadvisor[tui]' (or use `ftadvisor estimate`)",
                  file=sys.stderr)
            raise SystemExit(2) from None
        raise
    FtAdvisorApp(state=state, start=start).run()
