"""ReelForge training: models, objective, loops."""
