"""Entry point that starts bqemulator offline.

bqemulator needs DuckDB's ``spatial`` extension and these machines have no internet, so the
extension is imported from the ``duckdb-extension-spatial`` wheel before the CLI starts.
Usage: ``python -m sandbox.bq_emulator start --rest-port P --grpc-port G --project X``.
"""

from __future__ import annotations

import sys


def main() -> None:
    import duckdb_extensions

    duckdb_extensions.import_extension("spatial")
    from bqemulator.cli import main as bq_main

    sys.argv = ["bqemulator", *sys.argv[1:]]
    bq_main()


if __name__ == "__main__":
    main()
