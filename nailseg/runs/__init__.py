"""What a run records about itself, and reading those records back."""
