"""lcas/plugins."""
