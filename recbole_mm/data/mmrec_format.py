"""MMRec's folder format, importable from here as before: :mod:`recbole_mm.mmrec_format` holds it,
below the data package, because :mod:`recbole_mm.prepare` (which the dataset calls to build a
bundled dataset) writes it too."""
from recbole_mm.mmrec_format import (  # noqa: F401  (re-exported)
    FEATURE_SUFFIX,
    LAYOUT_HINT,
    MMREC_ITEM,
    MMREC_LABEL,
    MMREC_USER,
    feature_files,
    inter_layout,
    read_mmrec_inter,
    write_mmrec_inter,
)
