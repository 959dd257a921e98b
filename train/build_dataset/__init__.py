"""The paired portrait-edit dataset builder (``python -m train.build_dataset``), split by role:

* :mod:`.plan`: the recorded settings (``BuildConfig``), the rows they determine and which shard owns each;
* :mod:`.export`: atomic writes, per-shard part files, ``build.json`` and the merge into the manifest;
* :mod:`.build`: sources, the generator and filters, and the resumable per-shard generation loop;
* :mod:`.cli`: the command line (``__main__`` runs it).

The output is the ``instantportrait-pairs/1`` format of :mod:`instantportrait.training.data`.
"""

from train.build_dataset.build import RowBuilder, load_components, resolve_sources, run_shard
from train.build_dataset.cli import build_parser, main, shard_from_environment
from train.build_dataset.export import PartFile, check_same_config, merge, read_build_json, read_part_rows
from train.build_dataset.plan import (
    BUILD_JSON,
    DATASET_JSON,
    MANIFEST,
    ROW_KEYS,
    BuildConfig,
    BuildError,
    Locations,
    RunOptions,
    part_path,
    plan_rows,
    row_seed,
    shard_rows,
)

__all__ = [
    "BUILD_JSON", "DATASET_JSON", "MANIFEST", "ROW_KEYS", "BuildConfig", "BuildError", "Locations", "PartFile",
    "RowBuilder", "RunOptions", "build_parser", "check_same_config", "load_components", "main", "merge", "part_path",
    "plan_rows", "read_build_json", "read_part_rows", "resolve_sources", "row_seed", "run_shard",
    "shard_from_environment", "shard_rows",
]
