"""Evidence that a model got better: preference accuracy, generation-based reward, KL to the reference, reports."""
