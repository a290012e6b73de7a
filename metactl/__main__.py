"""``python -m metactl``: the CLI, as torchrun's ``-m metactl`` starts it."""

from metactl.cli.main import main

if __name__ == "__main__":
    main()
