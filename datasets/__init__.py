"""Dataset cards shipped with metactl (YAML files beside this module)."""
