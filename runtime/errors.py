class RuntimeInputError(ValueError):
    """Bad input to the runtime (artifact, prompt, options); the CLI prints it as one line."""
