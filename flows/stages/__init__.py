"""The pipeline's stages, one module each; ``flows/pipeline.py`` lists them in order."""
