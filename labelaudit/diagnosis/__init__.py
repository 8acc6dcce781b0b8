"""The likely kind of error in each region of a slice, and of the slice and its case, from comparing the
label with the robust prediction:

    kinds.py       ErrorKind and its words, ErrorKindParams, and the pixel masses that name a kind
    regions.py     the regions of a slice (what `fix` changes), each with its kind, and their weight
    slice_kind.py  the kind of a slice (the slices.csv `error_kind`) and of a case

Import from here: `from labelaudit.diagnosis import ErrorKind, classify_slices`.
"""

from __future__ import annotations

from .kinds import KIND_HELP, KIND_LABELS, ErrorKind, ErrorKindParams, KindMasses, kind_from_masses, kind_masses
from .regions import Region, find_regions, region_weight
from .slice_kind import classify_slice, classify_slices, dominant_kind

__all__ = [
    "ErrorKind", "KIND_LABELS", "KIND_HELP", "ErrorKindParams", "KindMasses", "kind_masses", "kind_from_masses",
    "Region", "find_regions", "region_weight",
    "classify_slice", "classify_slices", "dominant_kind",
]
