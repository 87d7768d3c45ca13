"""``python -m augment install-wordnet | check-wordnet``: set up WordNet for synonym augmentation."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .wordnet import DEBIAN_DIR, WordNetMissing, check_wordnet, install


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m augment")
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("install-wordnet", help="build NLTK's WordNet corpus (in this environment) "
                                                   "from Debian's wordnet-base and wordnet-sense-index")
    build.add_argument("--from", dest="source", type=Path, default=DEBIAN_DIR,
                       help="a WordNet 3.0 database folder (default: %(default)s)")
    sub.add_parser("check-wordnet", help="exit 0 if WordNet is usable, else say how to install it")
    args = parser.parse_args(argv)
    if args.command == "install-wordnet":
        try:
            print(f"WordNet corpus: {install(args.source)}")
        except WordNetMissing as e:
            print(e, file=sys.stderr)
            return 1
        return 0
    hint = check_wordnet()
    print(hint or "WordNet: ok", file=sys.stderr if hint else sys.stdout)
    return 1 if hint else 0


if __name__ == "__main__":
    sys.exit(main())
