"""Small shared helpers: environment, file writes, progress bars, child processes."""
