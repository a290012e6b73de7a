"""The ``metactl`` command line: thin Typer apps that parse, call the library and print."""
