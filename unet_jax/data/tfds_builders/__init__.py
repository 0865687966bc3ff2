"""TFDS builders with manual download for busi, udiat_b and montgomery; TensorFlow not needed.

Each builder reads the files the user downloaded (``manual_dir`` is what ``root`` would be for
``unet_jax.data.load``: the set's folder or the folder holding it) with the same file discovery
as the loaders, and writes one ``train`` split (none of these sets has an official split) at the
original resolution. Build to ``array_record`` and read with ``tfds.data_source``; neither needs
TensorFlow (``tfds.load`` and ``as_dataset`` do).

Build, from the command line or Python::

  python -m unet_jax.data.tfds_builders busi --manual_dir=~/data/Dataset_BUSI_with_GT \\
      --data_dir=~/tensorflow_datasets

  builder = tfds_builders.Busi(data_dir=data_dir, file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))

Read (after ``import unet_jax.data.tfds_builders``, which registers the names)::

  train = tfds.data_source('busi', data_dir=data_dir)['train']
  example = train[0]  # {'image': uint8 (H, W, 1), 'mask': uint8 (H, W, 1) in {0, 1},
                      #  'id': b'benign (1)', 'label': 0}

Features: ``image`` the grey image in 8 bits (16-bit scans reduced by the rule in
``unet_jax.data.real.pixels``), ``mask`` 0/1 (the OR of the image's mask files), both PNG;
``id`` the file stem; ``label`` a ClassLabel. Images are PNG-encoded here with Pillow because
``tfds.features.Image`` encodes numpy arrays with TensorFlow; it decodes with Pillow or OpenCV.
An unusable pair (image without mask, unreadable file, size mismatch) stops the build with an
error naming the files.
"""

from __future__ import annotations

import inspect
import io
import os
import warnings
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

from unet_jax.data.real import LOADERS, layouts, pixels
from unet_jax.errors import UserError

_CITATIONS = {
    'busi': ('Al-Dhabyani W, Gomaa M, Khaled H, Fahmy A. Dataset of breast ultrasound images. '
             'Data in Brief 28 (2020) 104863.'),
    'udiat_b': ('Yap MH, Pons G, Marti J, et al. Automated breast ultrasound lesions detection '
                'using convolutional neural networks. IEEE J Biomed Health Inform 22(4) '
                '(2018) 1218-1226.'),
    'montgomery': ('Jaeger S, Candemir S, Antani S, et al. Two public chest X-ray datasets for '
                   'computer-aided screening of pulmonary diseases. Quant Imaging Med Surg '
                   '4(6) (2014) 475-477.'),
}


def _instructions(name: str) -> str:
  return (f'Download the set yourself and pass its folder as manual_dir; it must hold '
          f'{layouts.WHERE[name]}.')


def _png(array: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format='PNG')
  return buffer.getvalue()


def _find(name: str, root: Path) -> layouts.Found:
  """The set's pairs under ``root``; any unusable file is an error."""
  found = LOADERS[name](root)
  for note in found.notes:
    warnings.warn(f'{name}: {note}', stacklevel=3)
  if found.problems:
    more = f' (and {len(found.problems) - 1} more)' if len(found.problems) > 1 else ''
    raise UserError(f'{name}: {found.problems[0]}{more}')
  if not found.pairs:
    raise UserError(f'{name}: no image with a mask under {root}; expected {layouts.WHERE[name]}')
  return found


class _RealSet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A real set read by ``unet_jax.data.real``; subclasses name the set and its classes."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  SET: str
  CLASSES: tuple[str, ...]
  HOMEPAGE: str

  # tfds 4.9.10 finds a builder's source file through `importlib_resources`, which it does not
  # install on Python >= 3.9 (tensorflow/datasets#11212); the file is all it needs here.
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    return epath.Path(inspect.getfile(cls))

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'{self.SET}: grey images with binary segmentation masks.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            'mask': tfds.features.Image(shape=(None, None, 1), dtype=np.uint8),
            'id': tfds.features.Text(),
            'label': tfds.features.ClassLabel(names=self.CLASSES),
        }),
        supervised_keys=('image', 'mask'),
        homepage=self.HOMEPAGE,
        citation=_CITATIONS[self.SET],
    )

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(Path(os.fspath(dl_manager.manual_dir)))}

  def _generate_examples(self, root: Path):
    for pair in _find(self.SET, root).pairs:
      try:
        image, _ = pixels.read_grey(pair.image)
        mask = pixels.read_mask(list(pair.masks))
      except pixels.BadFile as e:
        raise UserError(f'{self.SET}: {e.path or pair.image}: {e}') from e
      if image.shape != mask.shape:
        raise UserError(f'{self.SET}: image {pair.image} is {image.shape[1]}x{image.shape[0]} '
                        f'but its mask is {mask.shape[1]}x{mask.shape[0]}')
      yield pair.id, {
          'image': _png(np.round(image * 255).astype(np.uint8)),
          'mask': _png(mask.astype(np.uint8)),
          'id': pair.id,
          'label': pair.label,
      }


class Busi(_RealSet):
  """BUSI breast ultrasound (780 images; benign, malignant, normal)."""

  SET = 'busi'
  CLASSES = layouts.BUSI_CLASSES
  HOMEPAGE = 'https://scholar.cu.edu.eg/?q=afahmy/pages/dataset'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions('busi')


class UdiatB(_RealSet):
  """UDIAT Dataset B breast ultrasound (163 images; class 'unknown' without DatasetB.xlsx)."""

  SET = 'udiat_b'
  CLASSES = ('benign', 'malignant', 'unknown')
  HOMEPAGE = 'https://doi.org/10.1109/JBHI.2017.2731873'
  MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions('udiat_b')


class Montgomery(_RealSet):
  """Montgomery County chest X-rays with lung masks (138 images; normal, tb)."""

  SET = 'montgomery'
  CLASSES = ('normal', 'tb', 'unknown')
  HOMEPAGE = ('https://lhncbc.nlm.nih.gov/LHC-publications/pubs/'
              'TuberculosisChestXrayImageDataSets.html')
  MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions('montgomery')


BUILDERS = {'busi': Busi, 'udiat_b': UdiatB, 'montgomery': Montgomery}


def build(name: str, manual_dir: str | os.PathLike, data_dir: str | os.PathLike
          ) -> tfds.core.DatasetBuilder:
  """Builds a set into ``data_dir`` as array_record, without TensorFlow.

  Args:
    name: one of ``BUILDERS``: busi, udiat_b, montgomery.
    manual_dir: the downloaded set (its folder or the folder holding it).
    data_dir: TFDS data directory to write ``<name>/1.0.0/`` into.

  Returns:
    The prepared builder; ``builder.as_data_source()['train']`` reads it.
  """
  if name not in BUILDERS:
    raise UserError(f'unknown TFDS builder {name!r}; valid names: {", ".join(BUILDERS)}')
  manual_dir = Path(manual_dir).expanduser()
  _find(name, manual_dir)  # layout errors before anything is written to data_dir
  builder = BUILDERS[name](data_dir=os.fspath(Path(data_dir).expanduser()),
                           file_format='array_record')
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder
