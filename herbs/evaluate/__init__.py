"""Evaluation: `herbs eval` reports, `herbs predict` and `herbs heatmap` on a saved model."""
