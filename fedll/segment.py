"""Whole-tumour masks of NIfTI images with a kept model (``fedll segment``).

An image is read as training reads it (:func:`fedll.data.nifti.load_image`: any orientation
and voxel size, reoriented to RAS+), z-scored with its brain mask and cut into slices along
the model's ``slices.axis``, each padded to a square field of view in mm and resized to
``slices.size`` (:func:`fedll.data.slices.model_inputs`, the function training uses). Every
slice is predicted, in batches, on the chosen device. Each slice's logits are mapped back to
its own pixel grid (:func:`fedll.data.slices.unresize`: bilinear, padding cut off),
thresholded at 0, and the volume is brought back from RAS+ to the file's orientation
(:func:`fedll.data.nifti.from_canonical`): the mask has the image's shape and affine, uint8
labels 0 (background) and 1 (whole tumour).

One difference from training is unavoidable: no tumour mask is known, so the z-score
statistics are those of the brain mask alone (training adds the tumour to it, which changes
them only where tumour lies outside :func:`~fedll.data.slices.brain_mask`).

A cohort (a folder in any supported layout, or a manifest CSV: :func:`fedll.data.layouts.
discover`) gives one ``<patient>_<modality>_pred.nii.gz`` per case it lists, training and
test cases alike: which cases were held out is a run's split, not the cohort's.

A model that routes by modality (``routing: modality-soft`` / ``modality-hard``) is given the
image's modality: ``modality`` for one image (``fedll segment --modality``), each case's own
for a cohort; without one, a ConfigError says so. A modality given for one image to a model
that does not route by it is refused too: it would be ignored.

A mask is never written over an input (the image, or a cohort's image or mask file: the same
path, or the same file through a link or another spelling of its path), nor over any existing
file unless ``overwrite`` (``--overwrite``) is given: fedll cannot tell its own earlier mask
from a file that only has its name. Every output is checked before anything is computed. A
cohort whose layout is found by scanning its folder (BraTS, TCGA, MSD) never gets its masks
inside that folder, where the next scan would read them (or refuse the folder); a manifest
lists its files, so only the rule above applies to it.
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from fedll.atomic import atomic_path
from fedll.data import MODALITIES
from fedll.data.nifti import CanonicalImage, CaseRecord, from_canonical, load_image, nifti_stem
from fedll.data.slices import brain_mask, in_plane_spacing, model_inputs, normalise, unresize
from fedll.errors import ConfigError, DataError
from fedll.models.inspection import routes_by_modality
from fedll.models.saved import SavedModel

logger = logging.getLogger(__name__)

PREDICTION_SUFFIX = "_pred.nii.gz"

CaseCallback = Callable[[int, int, CaseRecord], None]


def check_modality(saved: SavedModel, modality: str | None) -> int | None:
    """The ``--modality`` option's check: :func:`modality_index`, and a ConfigError when a
    modality is given for a model that does not route by it (it would be ignored)."""
    if modality is not None and not routes_by_modality(saved.module):
        raise ConfigError(
            f"--modality: {saved.source} does not route by modality, so --modality {modality} "
            "would be ignored; leave it out"
        )
    return modality_index(saved, modality)


def modality_index(saved: SavedModel, modality: str | None) -> int | None:
    """The index of ``modality`` in :data:`~fedll.data.MODALITIES` when the kept model routes
    by modality (ConfigError if it is missing or unknown), else None (it is not used)."""
    if not routes_by_modality(saved.module):
        return None
    if modality is None:
        raise ConfigError(
            f"--modality: {saved.source} routes by the case's modality; give --modality "
            f"({' or '.join(MODALITIES)})"
        )
    if modality.lower() not in MODALITIES:
        raise ConfigError(f"--modality: {modality!r} is not one of {', '.join(MODALITIES)}")
    return MODALITIES.index(modality.lower())


@torch.inference_mode()
def predict_logits(
    module: torch.nn.Module,
    inputs: np.ndarray,
    device: torch.device,
    batch_size: int,
    modality: int | None = None,
) -> np.ndarray:
    """float32 (N, C, S, S): the logits of ``inputs`` (N, 1, S, S), ``batch_size`` slices
    at a time on ``device``; ``modality``, an index into :data:`~fedll.data.MODALITIES`,
    for a model that routes by it."""
    module = module.to(device).eval()
    out = []
    for start in range(0, len(inputs), batch_size):
        batch = torch.tensor(inputs[start : start + batch_size], dtype=torch.float32)  # a copy
        if modality is None:
            logits = module(batch.to(device))
        else:
            logits = module(batch.to(device), torch.full((len(batch),), modality, device=device))
        out.append(logits.float().cpu().numpy())
    return np.concatenate(out)


def segment_image(
    saved: SavedModel,
    image: CanonicalImage,
    device: torch.device,
    batch_size: int = 32,
    modality: str | None = None,
) -> np.ndarray:
    """uint8 mask (0/1) on the grid of ``image``'s file (its shape, in its orientation);
    ``modality``: the image's, for a model that routes by modality (:func:`modality_index`)."""
    index = modality_index(saved, modality)
    spec = saved.slices
    data = image.data
    inputs = model_inputs(normalise(data, brain_mask(data)), image.spacing, spec)
    logits = predict_logits(saved.module, inputs, device, batch_size, index)
    if logits.shape[1] != 1:
        raise DataError(
            f"{saved.source}: the model predicts {logits.shape[1]} channels; a whole-tumour "
            "mask needs one"
        )
    in_plane = np.moveaxis(data, spec.axis, 0).shape[1:]
    back = unresize(logits[:, 0], in_plane, in_plane_spacing(image.spacing, spec.axis))
    canonical = np.moveaxis(back > 0, 0, spec.axis)
    mask = from_canonical(canonical.astype(np.uint8), image.affine)
    assert mask.shape == image.shape, (mask.shape, image.shape)
    return mask


def write_mask(mask: np.ndarray, affine: np.ndarray, path: Path) -> Path:
    """Write a uint8 mask with ``affine`` (qform and sform) to ``path`` (.nii or .nii.gz),
    atomically."""
    nii = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), affine)
    nii.set_qform(affine, code=1)
    nii.set_sform(affine, code=1)
    payload = nii.to_bytes()
    if path.name.lower().endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    with atomic_path(path) as tmp:  # tmp ends in .tmp: write bytes, not nib.save
        tmp.write_bytes(payload)
    return path


def segment_file(
    saved: SavedModel,
    source: Path,
    out: Path,
    device: torch.device,
    batch_size: int = 32,
    channel: int | None = None,
    modality: str | None = None,
    overwrite: bool = False,
) -> Path:
    """Segment the NIfTI image ``source`` (``channel`` of a 4-D one; of ``modality``, for a
    model that routes by it) into ``out``: a NIfTI file name, or an existing folder (then
    ``<stem>_pred.nii.gz`` in it), which must not be ``source`` nor, unless ``overwrite``,
    an existing file (:func:`check_outputs`). Returns the path."""
    check_modality(saved, modality)
    source, out = Path(source), Path(out)
    if out.is_dir():
        out = out / f"{nifti_stem(source.name) or source.name}{PREDICTION_SUFFIX}"
    elif nifti_stem(out.name) is None:
        raise DataError(f"{out}: not a NIfTI file name (.nii or .nii.gz) for the mask")
    check_outputs([out], [source], overwrite)
    image, mask = _segment_path(saved, source, channel, device, batch_size, modality)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mask(mask, image.affine, out)
    logger.info("%s: %d tumour voxels -> %s", source, int(mask.sum()), out)
    return out


def _segment_path(
    saved: SavedModel,
    path: Path,
    channel: int | None,
    device: torch.device,
    batch_size: int,
    modality: str | None = None,
) -> tuple[CanonicalImage, np.ndarray]:
    """The image at ``path`` and its mask; an error about the voxels names the file."""
    image = load_image(path, channel)
    try:
        return image, segment_image(saved, image, device, batch_size, modality)
    except DataError as error:
        if str(error).startswith(saved.source):
            raise
        raise DataError(f"{path}: {error}") from None


def prediction_name(record: CaseRecord) -> str:
    """The file name of a case's mask in an output folder."""
    return f"{record.patient}_{record.modality}{PREDICTION_SUFFIX}"


def segment_cohort(
    saved: SavedModel,
    records: list[CaseRecord],
    out_dir: Path,
    device: torch.device,
    batch_size: int = 32,
    on_case: CaseCallback | None = None,
    overwrite: bool = False,
    scanned: Path | None = None,
) -> list[Path]:
    """Segment every record's image (e.g. of :func:`~fedll.data.layouts.discover`) into
    ``out_dir`` (:func:`prediction_name`), each with its own modality (for a model that
    routes by it); calls ``on_case(done, total, record)`` after each. No mask replaces a
    record's image or mask file nor, unless ``overwrite``, any existing file; ``scanned``: the
    folder the records were found by scanning, which ``out_dir`` must lie outside
    (:func:`check_out_dir`). Returns the paths, in record order."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, scanned)
    names = [prediction_name(r) for r in records]
    if len(set(names)) != len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DataError(f"{out_dir}: two cases would write {twice[0]}")
    inputs = [path for r in records for path in (r.image, r.mask)]
    check_outputs([out_dir / name for name in names], inputs, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for done, (record, name) in enumerate(zip(records, names, strict=True), start=1):
        image, mask = _segment_path(
            saved, record.image, record.channel, device, batch_size, record.modality
        )
        written.append(write_mask(mask, image.affine, out_dir / name))
        if on_case is not None:
            on_case(done, len(records), record)
    return written


def check_out_dir(out_dir: Path, scanned: Path | None = None) -> None:
    """DataError when ``out_dir`` exists and is not a folder, would be a folder named like a
    NIfTI file (a typo for one image's mask), or is, or lies inside, ``scanned``: the folder
    a cohort's layout is found by scanning (the next scan would meet the masks)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise DataError(f"{out_dir}: is a file; a cohort's masks need a folder")
    if not out_dir.exists() and nifti_stem(out_dir.name) is not None:
        raise DataError(f"{out_dir}: a NIfTI file name; a cohort's masks need a folder")
    if scanned is not None:
        root, where = Path(scanned).resolve(), out_dir.resolve()
        if where == root or root in where.parents:
            raise DataError(
                f"{out_dir}: inside the cohort folder {scanned}, whose next scan would read "
                "its masks as cohort files; give a folder outside it"
            )


def check_outputs(outputs: Sequence[Path], inputs: Iterable[Path], overwrite: bool) -> None:
    """DataError, before anything is computed, when a mask would be written over one of
    ``inputs`` (the same path, or the same file through a link or another spelling of its
    path: resolved paths and (st_dev, st_ino) compared), whatever ``overwrite`` says; over a
    folder; or, without ``overwrite``, over any existing file (fedll cannot tell its own
    earlier mask from another file of that name)."""
    by_path: dict[Path, Path] = {}
    by_inode: dict[tuple[int, int], Path] = {}
    for path in inputs:
        by_path.setdefault(Path(path).resolve(), Path(path))
        if (inode := _inode(Path(path))) is not None:
            by_inode.setdefault(inode, Path(path))
    existing = []
    for out in map(Path, outputs):
        inode = _inode(out)
        source = by_path.get(out.resolve()) or (by_inode.get(inode) if inode else None)
        if source is not None:
            raise DataError(
                f"{out}: is the input {source}; a mask is never written over an input "
                "(give another --out)"
            )
        if out.is_dir():
            raise DataError(f"{out}: is a folder, not a mask file")
        if inode is not None or out.is_symlink():
            existing.append(out)
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more of the masks)" if len(existing) > 1 else ""
        raise DataError(
            f"{existing[0]}: already exists{more}; give --overwrite to replace what is there"
        )


def _inode(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file ``path`` names (links followed), None when there is none."""
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def is_image(source: Path) -> bool:
    """Whether ``source`` names one NIfTI image (else a cohort folder or a manifest)."""
    return not Path(source).is_dir() and nifti_stem(Path(source).name) is not None
