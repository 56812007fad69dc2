"""Command line of the gradient-variance study: ``python -m vo_node.study {snr,sources,speedup}``."""

from vo_node.study import main

if __name__ == "__main__":
    raise SystemExit(main())
