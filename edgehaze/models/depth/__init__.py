"""Depth providers: frozen teachers (Depth Anything V2 family) and students."""
from edgehaze.models.depth import dav2  # noqa: F401  (registration)
from edgehaze.models.depth import da3  # noqa: F401  (registration)
