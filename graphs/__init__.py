"""gemma_graphs (the folder `graphs/`): the Gemma model definition the compiler traces and the
torch reference it measures against (config.py, gemma.py, ops.py). No import of gemma_export."""
