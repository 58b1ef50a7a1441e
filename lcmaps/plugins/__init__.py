"""lcmaps/plugins."""
