"""RGB dehazing backbones. Importing this package registers them all."""
from edgehaze.models.backbones import coa, dehazeformer, edge, mb_taylorformer, oknet, sgdn  # noqa: F401  (registration)
