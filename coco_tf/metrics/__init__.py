"""Full-ranking evaluation metrics."""
