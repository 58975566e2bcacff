"""``python -m blendmask_edu`` is the same as the ``blendmask-edu`` command."""

from blendmask_edu.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
