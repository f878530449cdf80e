"""The leaf every layer may import: registries, the user-error type, device checks and the stratified split.
It imports nothing else of the project."""
