"""Command line of the gradient-variance study: ``python -m vo_node.study COMMAND``."""

from vo_node.study import main

if __name__ == "__main__":
    raise SystemExit(main())
