"""fkp-track training: datasets, augmentation, networks and the fkp-train command."""
