"""The built-in datasets: one plugin module per dataset, registered through the ``metactl``
entry points exactly like a third-party package, with its YAML card beside it."""
