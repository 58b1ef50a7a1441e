"""glexec."""
