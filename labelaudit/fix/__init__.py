"""From the audit to a better dataset (`labelaudit fix`, and the `_fixed` map that `score` writes).

    rule.py       which regions are judged wrong, and the label with them replaced (score and fix share it)
    manifest.py   fixes.json: every change, typed and validated when read
    dataset.py    the corrected copy of the dataset (replace) or the one with nnU-Net ignore regions
"""
