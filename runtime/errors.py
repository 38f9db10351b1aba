class RuntimeInputError(ValueError):
    """Bad input to the runtime (artifact, prompt, options); the CLI prints it as one line."""


class ContextLengthExceeded(RuntimeInputError):
    """A prompt (and the tokens asked for) longer than the artifact's context."""
