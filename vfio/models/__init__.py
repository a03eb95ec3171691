"""Device models shipped with the toolkit (see :mod:`vfio.model`): :mod:`vfio.models.edu`."""
