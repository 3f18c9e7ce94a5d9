"""`regstream` command: the package's command-line tools in one place.

regstream publish [--loop]   publish new CDC events (once, or continuously until stopped)

The local stack has its own tool, `python3 -m stackctl` (the product does not import it).
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "publish":
        from regstream.publish import main as publish_main

        return publish_main(rest)
    print(f"regstream: unknown command {command!r}\n{__doc__}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
