"""Where each real set keeps its files, as distributed, and which mask files belong to each image.

``root`` may be the set's own folder or a folder holding it (one level up), except for
``jsrt_scr`` and ``folder`` (below). Folder names are matched ignoring case; hidden files and
files that are not images (``Thumbs.db``, ``.txt`` readings) are ignored.

busi (Al-Dhabyani et al. 2020)
  ``Dataset_BUSI_with_GT/{benign,malignant,normal}/benign (1).png`` with ``benign (1)_mask.png``
  and, for a few images, ``benign (4)_mask_1.png``, ``_mask_2.png`` (OR-merged). Class = folder.
udiat_b (Yap et al. 2018, Dataset B)
  ``original/000001.png`` and ``GT/000001.png`` (same names), ``DatasetB.xlsx`` with a column of
  image names or numbers and a column of Benign/Malignant (found by content, any sheet). Without
  the sheet every class is ``unknown`` (a warning says so; ``label_source`` in the metadata).
montgomery (Jaeger et al. 2014)
  ``MontgomerySet/CXR_png/MCUCXR_0001_0.png`` (suffix ``_0`` normal, ``_1`` tuberculosis: class
  ``normal`` / ``tb``), masks ``MontgomerySet/ManualMask/leftMask/<same name>`` and
  ``rightMask/<same name>``, target = left OR right; both lung masks are required.
jsrt_scr (JSRT, Shiraishi et al. 2000, with SCR masks, van Ginneken et al. 2006)
  ``root`` is any folder under which both are found, searched recursively: the JSRT raw images
  ``*.IMG`` (e.g. ``root/All247images/JPCLN001.IMG``) and the SCR masks
  ``.../fold1|fold2/masks/left lung|right lung/JPCLN001.gif`` (e.g. ``root/scr/fold1/...``).
  Target = left OR right lung; class ``nodule`` (JPCLN) or ``normal`` (JPCNN); the SCR fold is
  kept in the metadata. Masks (1024 px) may be smaller than images (2048 px) if the shape agrees.
folder (saliency sets: XPIE, DUTS, MSRA10K, ...)
  ``root`` is one of
  - a folder with one images folder and one masks folder (names containing image/img/original/
    input and mask/gt/ground/label/annotation/seg), e.g. DUTS ``DUTS-TR/`` with
    ``DUTS-TR-Image/`` and ``DUTS-TR-Mask/``;
  - a pair ``(images_dir, masks_dir)``, or in a string the two joined by ``os.pathsep``
    (``"imgs:masks"`` on Linux and macOS), for configs;
  - one folder holding both, as MSRA10K ``Imgs/``: mask ``<stem>.png`` beside image
    ``<stem>.jpg`` (or ``.jpeg``, ``.bmp``, ``.tif``).
  Masks pair with images by file stem, also with a ``_mask``, ``_gt`` or ``_segmentation``
  suffix (``ISIC_0000000_segmentation.png``). Class ``object``. A set of several structures
  holds label maps there, or one binary mask per structure in sub-folders of the masks
  folder named after the structures (``masks/cavity/a.png``, ``masks/wall/a.png``).
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from collections import defaultdict
from pathlib import Path

from unet_jax.errors import UserError

IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff', '.gif', '.nii', '.nii.gz')


def file_suffix(path: Path) -> str:
  """The file's type suffix, lower case; ``.nii.gz`` is one suffix."""
  name = path.name.lower()
  return '.nii.gz' if name.endswith('.nii.gz') else path.suffix.lower()


def file_stem(path: Path) -> str:
  """The name without :func:`file_suffix` (``case_01.nii.gz`` -> ``case_01``)."""
  return path.name[:-len(file_suffix(path))] if file_suffix(path) else path.name
MASK_SUFFIXES = ('_mask', '_gt', '_segmentation')
BUSI_CLASSES = ('benign', 'malignant', 'normal')

# Expected layout and where the set is published, for the error on a missing folder.
WHERE = {
    'busi': ('Dataset_BUSI_with_GT/ with benign/, malignant/, normal/ holding "benign (1).png" '
             'and "benign (1)_mask.png"; BUSI is published at '
             'https://scholar.cu.edu.eg/?q=afahmy/pages/dataset'),
    'udiat_b': ('original/000001.png ..., GT/000001.png ... and DatasetB.xlsx; UDIAT Dataset B '
                'is available on request from the authors of Yap et al. 2018, "Automated '
                'breast ultrasound lesions detection using convolutional neural networks"'),
    'montgomery': ('MontgomerySet/ with CXR_png/*.png and ManualMask/leftMask/, '
                   'ManualMask/rightMask/; published at https://lhncbc.nlm.nih.gov/'
                   'LHC-publications/pubs/TuberculosisChestXrayImageDataSets.html'),
    'jsrt_scr': ('JSRT raw *.IMG files and SCR masks fold1|fold2/masks/left lung|right lung/'
                 '*.gif anywhere under the folder; JSRT is published at '
                 'http://db.jsrt.or.jp/eng.php and SCR at '
                 'https://www.isi.uu.nl/Research/Databases/SCR/'),
    'folder': ('a folder with an images folder and a masks folder (e.g. DUTS-TR-Image/ and '
               'DUTS-TR-Mask/), a pair (images_dir, masks_dir), or one folder with '
               '<stem>.jpg images beside <stem>.png masks (MSRA10K Imgs/)'),
}


@dataclasses.dataclass(frozen=True)
class Pair:
  """One image, the mask files OR-merged into its target, its class and extra metadata."""
  id: str
  image: Path
  masks: tuple[Path, ...]
  label: str
  info: dict = dataclasses.field(default_factory=dict)  # e.g. {'fold': 'fold1'}


@dataclasses.dataclass(frozen=True)
class Problem:
  """Files that do not make a usable pair, and why."""
  files: tuple[Path, ...]
  reason: str

  def __str__(self):
    return f'{", ".join(str(f) for f in self.files)}: {self.reason}'


@dataclasses.dataclass
class Found:
  """What a layout search found under a root."""
  base: Path  # metadata paths are relative to it
  pairs: list[Pair]
  problems: list[Problem] = dataclasses.field(default_factory=list)
  extra_files: list[Path] = dataclasses.field(default_factory=list)  # label sheets
  notes: list[str] = dataclasses.field(default_factory=list)  # to warn about
  mask_scale: bool = False  # masks may be a scaled copy of the image grid (SCR)
  per_structure: bool = False  # a pair's masks: one binary file per structure, in order


def missing(name: str, root, what: str = '') -> UserError:
  """The error for a root that does not hold the set's layout."""
  what = what or f'{root} does not hold the {name} layout'
  return UserError(f'{name}: {what}; expected {WHERE[name]}')


def natural_key(path: Path) -> list:
  """Sort key putting 'benign (2)' before 'benign (10)'."""
  return [int(t) if t.isdigit() else t.lower() for t in re.split(r'(\d+)', path.name)]


def image_files(folder: Path) -> list[Path]:
  """Image files directly in ``folder``, in natural order."""
  files = [p for p in folder.iterdir()
           if file_suffix(p) in IMAGE_SUFFIXES and not p.name.startswith('.') and p.is_file()]
  return sorted(files, key=natural_key)


def child(folder: Path, name: str) -> Path | None:
  """The entry of ``folder`` named ``name``, ignoring case."""
  exact = folder / name
  if exact.exists():
    return exact
  for entry in folder.iterdir():
    if entry.name.lower() == name.lower():
      return entry
  return None


def descend(name: str, root: Path, holds) -> Path:
  """``root`` if ``holds(root)``, else its only sub-folder that does; else the layout error."""
  if not root.is_dir():
    raise missing(name, root, f'no folder {root}')
  if holds(root):
    return root
  inside = [d for d in sorted(root.iterdir()) if d.is_dir() and holds(d)]
  if len(inside) == 1:
    return inside[0]
  raise missing(name, root)


def by_stem(files: list[Path], problems: list[Problem], stem=file_stem) -> dict:
  """{stem: file}; two files with one stem are a problem, and neither is used."""
  groups = defaultdict(list)
  for f in files:
    groups[stem(f)].append(f)
  out = {}
  for key, group in groups.items():
    if len(group) == 1:
      out[key] = group[0]
    else:
      problems.append(Problem(tuple(group), 'several files for one image'))
  return out


def pair_up(images: dict, masks: dict, label, problems: list[Problem], expected) -> list[Pair]:
  """Pairs {stem: image} with {stem: [mask files]}; unpaired files become problems."""
  pairs = []
  for stem, image in images.items():
    if stem in masks:
      pairs.append(Pair(stem, image, tuple(masks[stem]), label(stem)))
    else:
      problems.append(Problem((image,), f'image without mask (expected {expected(stem)})'))
  for stem in sorted(masks.keys() - images.keys()):
    problems.append(Problem(tuple(masks[stem]), 'mask without image'))
  return pairs


_BUSI_MASK = re.compile(r'^(?P<stem>.+)_mask(?:_(?P<n>\d+))?$')


def find_busi(root: Path) -> Found:
  """BUSI: class folders of images with ``_mask``, ``_mask_1``, ... files beside them."""
  base = descend('busi', root, lambda d: any(child(d, c) for c in BUSI_CLASSES))
  pairs, problems = [], []
  for cls in BUSI_CLASSES:
    folder = child(base, cls)
    if folder is None or not folder.is_dir():
      continue
    images, masks = [], defaultdict(list)
    for f in image_files(folder):
      m = _BUSI_MASK.match(f.stem)
      if m:
        masks[m['stem']].append((int(m['n'] or 0), f))
      else:
        images.append(f)
    masks = {stem: [f for _, f in sorted(fs)] for stem, fs in masks.items()}
    pairs += pair_up(by_stem(images, problems), masks, lambda _, c=cls: c, problems,
                     lambda stem, d=folder: d / f'{stem}_mask.png')
  return Found(base, pairs, problems)


def find_udiat_b(root: Path) -> Found:
  """UDIAT Dataset B: ``original/`` and ``GT/`` with the same names, classes in an xlsx."""
  base = descend('udiat_b', root,
                 lambda d: child(d, 'original') is not None and child(d, 'GT') is not None)
  original, gt = child(base, 'original'), child(base, 'GT')
  problems = []
  images = by_stem(image_files(original), problems)
  masks = {stem: [f] for stem, f in by_stem(image_files(gt), problems).items()}
  sheet = child(base, 'DatasetB.xlsx')
  if sheet is None:
    sheets = sorted(base.glob('*.xlsx'))
    sheet = sheets[0] if len(sheets) == 1 else None
  notes, extra = [], []
  if sheet is None:
    classes, source = {}, 'none (DatasetB.xlsx missing)'
    notes.append(f'no DatasetB.xlsx in {base}: every class is "unknown"')
  else:
    classes, source, extra = read_label_sheet(sheet, list(images)), sheet.name, [sheet]
    unlisted = [s for s in images if s not in classes]
    if unlisted:
      notes.append(f'{len(unlisted)} images have no Benign/Malignant class in {sheet} and '
                   f'get class "unknown", e.g. {unlisted[0]}')
  pairs = pair_up(images, masks, lambda stem: classes.get(stem, 'unknown'), problems,
                  lambda stem: gt / images[stem].name)
  pairs = [dataclasses.replace(p, info={'label_source': source}) for p in pairs]
  return Found(base, pairs, problems, extra, notes)


def _cell_key(value):
  """An image name or number in a sheet cell, as a comparable key ('000001.png' -> 1)."""
  if value is None or isinstance(value, bool):
    return None
  if isinstance(value, (int, float)):
    return int(value) if float(value).is_integer() else None
  text = str(value).strip()
  if text.lower().endswith(IMAGE_SUFFIXES):
    text = text.rsplit('.', 1)[0]
  return int(text) if text.isdigit() else text.lower() or None


def read_label_sheet(path: Path, stems: list[str]) -> dict[str, str]:
  """{image stem: 'benign' | 'malignant'} from the first sheet with both columns.

  The image column is the one whose cells match most image names (``000001``, ``1`` or
  ``000001.png``), the class column the one with most Benign/Malignant cells.
  """
  # openpyxl only here: the UDIAT sheet is the one spreadsheet read, and an
  # accelerator image without openpyxl can still import the data package.
  import openpyxl
  from openpyxl.utils.exceptions import InvalidFileException
  try:
    book = openpyxl.load_workbook(path, read_only=True, data_only=True)
  except (InvalidFileException, zipfile.BadZipFile, OSError, KeyError, ValueError) as e:
    raise UserError(f'udiat_b: cannot read {path}: {e}') from e
  key_to_stem = {_cell_key(s): s for s in stems}
  try:
    for sheet in book.worksheets:
      rows = [tuple(r) for r in sheet.iter_rows(values_only=True)]
      classes = _classes_from_rows(rows, key_to_stem, path)
      if classes:
        return classes
  finally:
    book.close()
  raise UserError(f'udiat_b: {path} has no sheet with a column of image names (as in '
                  f'original/, e.g. {stems[0] if stems else "000001"}) and a column of '
                  'Benign/Malignant')


def _classes_from_rows(rows, key_to_stem, path) -> dict[str, str]:
  width = max((len(r) for r in rows), default=0)
  cols = [[r[j] if j < len(r) else None for r in rows] for j in range(width)]
  norm = lambda v: str(v).strip().lower() if v is not None else ''
  class_hits = [sum(norm(v) in ('benign', 'malignant') for v in c) for c in cols]
  id_hits = [sum(_cell_key(v) in key_to_stem for v in c) for c in cols]
  if not class_hits or max(class_hits) == 0:
    return {}
  class_col = class_hits.index(max(class_hits))
  id_hits[class_col] = 0
  if max(id_hits) == 0:
    return {}
  id_col = id_hits.index(max(id_hits))
  classes = {}
  for cell_id, cell_class in zip(cols[id_col], cols[class_col]):
    stem, label = key_to_stem.get(_cell_key(cell_id)), norm(cell_class)
    if stem is None or label not in ('benign', 'malignant'):
      continue
    if classes.setdefault(stem, label) != label:
      raise UserError(f'udiat_b: {path} gives image {stem} two classes')
  return classes


def find_montgomery(root: Path) -> Found:
  """Montgomery: ``CXR_png/`` with left and right lung masks of the same names."""
  base = descend('montgomery', root, lambda d: child(d, 'CXR_png') is not None)
  manual = child(base, 'ManualMask')
  left = manual and child(manual, 'leftMask')
  right = manual and child(manual, 'rightMask')
  if not (left and right):
    raise missing('montgomery', root, f'no ManualMask/leftMask and rightMask in {base}')
  problems = []
  images = by_stem(image_files(child(base, 'CXR_png')), problems)
  lefts = by_stem(image_files(left), problems)
  rights = by_stem(image_files(right), problems)
  pairs = []
  for stem, image in images.items():
    lacking = [d / image.name for d, ms in ((left, lefts), (right, rights)) if stem not in ms]
    if lacking:
      problems.append(Problem((image,), 'image without mask (expected '
                              + ' and '.join(str(p) for p in lacking) + ')'))
      continue
    label = {'0': 'normal', '1': 'tb'}.get(stem.rsplit('_', 1)[-1], 'unknown')
    pairs.append(Pair(stem, image, (lefts[stem], rights[stem]), label))
  for stem in sorted((lefts.keys() | rights.keys()) - images.keys()):
    files = tuple(m[stem] for m in (lefts, rights) if stem in m)
    problems.append(Problem(files, 'mask without image'))
  return Found(base, pairs, problems)


def find_jsrt_scr(root: Path) -> Found:
  """JSRT raw images and SCR lung masks, found anywhere under ``root``."""
  if not root.is_dir():
    raise missing('jsrt_scr', root, f'no folder {root}')
  raws, lungs = defaultdict(list), {'left lung': defaultdict(list), 'right lung': defaultdict(list)}
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    here = Path(dirpath)
    side = here.name.lower()
    in_masks = side in lungs and here.parent.name.lower() == 'masks'
    for f in sorted(filenames):
      stem, suffix = os.path.splitext(f)
      if suffix.lower() == '.img':
        raws[stem.upper()].append(here / f)
      elif in_masks and suffix.lower() == '.gif':
        lungs[side][stem.upper()].append(here / f)
  if not raws:
    raise missing('jsrt_scr', root, f'no JSRT *.IMG file under {root}')
  if not (lungs['left lung'] or lungs['right lung']):
    raise missing('jsrt_scr', root, f'no SCR masks/left lung/*.gif under {root}')
  for found in (raws, *lungs.values()):
    for stem, files in found.items():
      if len(files) > 1:
        raise UserError(f'jsrt_scr: {len(files)} files for image {stem}: '
                        f'{", ".join(map(str, files))}; keep one copy under {root}')
  problems, pairs = [], []
  left, right = ({k: v[0] for k, v in lungs[s].items()} for s in ('left lung', 'right lung'))
  for stem in sorted(raws):
    image = raws[stem][0]
    if stem not in left or stem not in right:
      lacking = ' and '.join(f'{s}/{stem}.gif' for s, m in (('left lung', left),
                                                           ('right lung', right))
                             if stem not in m)
      problems.append(Problem((image,), f'image without mask (expected SCR masks/{lacking})'))
      continue
    fold = left[stem].parent.parent.parent.name
    label = {'JPCLN': 'nodule', 'JPCNN': 'normal'}.get(stem[:5], 'unknown')
    pairs.append(Pair(stem, image, (left[stem], right[stem]), label, {'fold': fold}))
  for stem in sorted((left.keys() | right.keys()) - raws.keys()):
    files = tuple(m[stem] for m in (left, right) if stem in m)
    problems.append(Problem(files, 'mask without image'))
  return Found(root, pairs, problems, mask_scale=True)


_IMAGE_DIR_WORDS = ('image', 'img', 'original', 'input')
_MASK_DIR_WORDS = ('mask', 'gt', 'ground', 'label', 'annotation', 'seg')


def find_folder(root: Path | tuple[Path, Path], structures: tuple[str, ...] = ()) -> Found:
  """Any images folder and masks folder, paired by file stem.

  With ``structures`` (several) and a masks folder holding one sub-folder named after
  each (``masks/cavity/``, ``masks/wall/``), each image's masks are one binary file per
  structure, in structure order (``Found.per_structure``); an image lacking one is a
  problem naming the file expected.
  """
  if isinstance(root, tuple):
    if len(root) != 2:
      raise UserError(f'folder: expected (images_dir, masks_dir), got {len(root)} paths')
    for d in root:
      if not d.is_dir():
        raise missing('folder', d, f'no folder {d}')
    images_dir, masks_dir = root
    base = Path(os.path.commonpath([images_dir.absolute(), masks_dir.absolute()]))
  else:
    if not root.is_dir():
      raise missing('folder', root, f'no folder {root}')
    subdirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith('.')]
    has = lambda d, words: any(w in d.name.lower() for w in words)
    mask_dirs = [d for d in subdirs if has(d, _MASK_DIR_WORDS)]
    image_dirs = [d for d in subdirs if has(d, _IMAGE_DIR_WORDS) and d not in mask_dirs]
    base = root
    if len(image_dirs) == 1 and len(mask_dirs) == 1:
      images_dir, masks_dir = image_dirs[0], mask_dirs[0]
    elif not image_dirs and not mask_dirs and image_files(root):
      images_dir = masks_dir = root
    else:
      names = ', '.join(d.name for d in subdirs) or 'none'
      raise missing('folder', root, f'cannot tell the images and masks folders in {root} '
                    f'(sub-folders: {names}); pass root=(images_dir, masks_dir)')
  problems = []
  folders = {d.name.lower(): d for d in masks_dir.iterdir() if d.is_dir()} if len(
      structures) > 1 else {}
  if folders and all(n.lower() in folders for n in structures):
    images = by_stem(image_files(images_dir), problems)
    per = [by_stem(image_files(folders[n.lower()]), problems,
                   stem=lambda f: _mask_stem(file_stem(f), images)) for n in structures]
    masks, unpaired = {}, set()
    for stem in images:
      lacking = [n for n, found in zip(structures, per) if stem not in found]
      if lacking:
        unpaired.add(stem)
        problems.append(Problem((images[stem],), 'image without its mask of '
                                f'{", ".join(lacking)} (expected '
                                f'{folders[lacking[0].lower()] / (stem + ".png")})'))
      else:
        masks[stem] = [found[stem] for found in per]
    for stem in sorted(set().union(*per) - images.keys()):
      problems.append(Problem(tuple(f[stem] for f in per if stem in f), 'mask without image'))
    pairs = [Pair(stem, image, tuple(masks[stem]), 'object')
             for stem, image in images.items() if stem in masks]
    return Found(base, pairs, problems, per_structure=True)
  if images_dir == masks_dir:
    files = image_files(images_dir)
    suffixes = defaultdict(set)
    for f in files:
      suffixes[file_stem(f)].add(file_suffix(f))
    # MSRA10K: <stem>.png beside <stem>.jpg is the mask; <stem>_mask.png always is.
    mask_files = [f for f in files if file_stem(f).endswith(MASK_SUFFIXES)
                  or (file_suffix(f) == '.png' and len(suffixes[file_stem(f)]) > 1)]
    image_list = sorted(set(files) - set(mask_files), key=natural_key)
  else:
    image_list, mask_files = image_files(images_dir), image_files(masks_dir)
  images = by_stem(image_list, problems)
  masks = by_stem(mask_files, problems, stem=lambda f: _mask_stem(file_stem(f), images))
  return Found(base, pair_up(images, {s: [f] for s, f in masks.items()}, lambda _: 'object',
                             problems, lambda stem: masks_dir / f'{stem}.png'), problems)


def _mask_stem(stem: str, images: dict) -> str:
  if stem in images:
    return stem
  for suffix in MASK_SUFFIXES:
    if stem.endswith(suffix) and stem[:-len(suffix)] in images:
      return stem[:-len(suffix)]
  return stem

