"""``python -m perm.stages``: the stage graph (perm.stages.describe); ``--cli-table``: the README's CLI
rows."""

import sys

from perm.stages import cli_table, describe

print("\n".join(cli_table()) if "--cli-table" in sys.argv[1:] else describe())
