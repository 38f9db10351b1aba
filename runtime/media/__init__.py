"""Media preprocessing in the runtime, torch-free (numpy and Pillow): images and audio decoded
safely, turned into the arrays an artifact's encoder graph takes (equal to transformers'
processors'), and each placeholder of a prompt expanded into the token sequence the processor
writes."""
