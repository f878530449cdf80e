"""The leaf every layer may import: registries, the user-error type, the stratified split. Imports nothing else
of the project."""
