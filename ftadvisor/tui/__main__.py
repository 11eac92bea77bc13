"""``python -m ftadvisor.tui [-m MODEL] [-g GPU] [--framework F]``: the wizard, as ``ftadvisor tui`` opens it."""

import argparse
import sys

from ftadvisor.errors import FtAdvisorError
from ftadvisor.tui import main

parser = argparse.ArgumentParser(prog="python -m ftadvisor.tui", description="The ftadvisor wizard.")
parser.add_argument("-m", "--model", help="profile id, Hub id org/name[@rev], or a config.json path / directory")
parser.add_argument("-g", "--gpu", help="card profile id or alias, or a card YAML file")
parser.add_argument("--framework", help="training stack the plans are for (hf-trl, axolotl, llama-factory, ...)")
args = parser.parse_args()
try:
    main(model=args.model, gpu=args.gpu, framework=args.framework)
except FtAdvisorError as err:
    print(f"error: {err}", file=sys.stderr)
    raise SystemExit(2) from None
