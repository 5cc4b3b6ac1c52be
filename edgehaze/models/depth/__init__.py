"""Depth providers: frozen teachers (Depth Anything V2 / 3 families) and students."""
from typing import Dict

from edgehaze.models.depth import dav2  # noqa: F401  (registration)
from edgehaze.models.depth import da3  # noqa: F401  (registration)
from edgehaze.models.depth import da3_anyview  # noqa: F401  (registration)


def teacher_licenses() -> Dict[str, str]:
    """Licence of each released teacher's weights, by teacher id (one table per family).

    What checkpoints and artifacts made from a teacher (a distilled student
    included) record as their licence.
    """
    out: Dict[str, str] = {}
    for family in (dav2.DepthAnythingTeacher, da3.Da3MonoTeacher, da3_anyview.Da3AnyViewTeacher):
        out.update({mid: r.license for mid, r in family.releases.items() if r.arch != "tiny"})
    return out
