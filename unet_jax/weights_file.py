"""Pretrained PyTorch weights read into numpy arrays, without importing torch.

Two formats are read:

- ``.safetensors``: a JSON header and raw bytes, parsed by the ``safetensors`` package.
- ``.pth``/``.pt``/``.bin`` as written by ``torch.save`` since torch 1.6: a zip holding
  ``<archive>/data.pkl`` (the pickled object) and ``<archive>/data/<key>`` (each storage's raw
  bytes, in the byte order named by ``<archive>/byteorder``). In the pickle a tensor is a call
  ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)``, and each storage a
  persistent id ``('storage', torch.FloatStorage, key, location, numel)``.

Safety: a pickle names the functions to call while it loads, so unpickling a file from the
internet can run anything. Here ``find_class`` allows only ``collections.OrderedDict``, the
storage type names and torch's tensor and parameter rebuild functions, and each of those names
is answered by code in this module (a strided copy of a numpy storage), never by torch's; every
other name is refused before anything is called. Nothing from the file is executed.

Half precision (float16, bfloat16) is widened to float32; other dtypes are kept.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import zipfile
from typing import Any, NamedTuple

import numpy as np

from unet_jax.errors import UserError

EXTENSIONS = ('.pth', '.pt', '.bin', '.safetensors')

# Element dtype of the stored bytes, without byte order; 'bf16' has no numpy dtype.
_TORCH_STORAGES = {
    'FloatStorage': 'f4', 'DoubleStorage': 'f8', 'HalfStorage': 'f2', 'BFloat16Storage': 'bf16',
    'LongStorage': 'i8', 'IntStorage': 'i4', 'ShortStorage': 'i2', 'CharStorage': 'i1',
    'ByteStorage': 'u1', 'BoolStorage': 'b1'}
_SAFETENSORS_DTYPES = {
    'F32': 'f4', 'F64': 'f8', 'F16': 'f2', 'BF16': 'bf16', 'I64': 'i8', 'I32': 'i4',
    'I16': 'i2', 'I8': 'i1', 'U8': 'u1', 'BOOL': 'b1'}
_RESAVE = 'save a state dict with torch.save(model.state_dict(), path)'


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Parameter name -> array, from a PyTorch checkpoint or a safetensors file.

  A checkpoint that wraps its state dict under 'state_dict' or 'model' (timm, MMCV) is
  unwrapped.

  Args:
    path: a ``.pth``, ``.pt`` or ``.bin`` file from ``torch.save``, or a ``.safetensors`` file.

  Returns:
    The tensors in the file's order; float16 and bfloat16 as float32.

  Raises:
    UserError: the file is missing, of another format or damaged, or holds anything but
      tensors and plain containers.

  Example:
    >>> params = read_state_dict('resnet34.pth')
    >>> params['conv1.weight'].shape
    (64, 3, 7, 7)
  """
  path = os.fspath(path)
  extension = os.path.splitext(path)[1].lower()
  if extension not in EXTENSIONS:
    raise UserError(f'{path}: unknown weights file extension {extension!r}; '
                    f'expected one of {", ".join(EXTENSIONS)}')
  if not os.path.isfile(path):
    raise UserError(f'{path}: no such weights file')
  if extension == '.safetensors':
    return _read_safetensors(path)
  return _state_dict(_read_torch_zip(path), path)


def _decode(data: bytes, dtype: str, order: str = '<') -> np.ndarray:
  """Flat array of a storage's bytes in native byte order; half precision widened to float32."""
  if dtype == 'bf16':  # bfloat16 is the top half of a float32
    return (np.frombuffer(data, order + 'u2').astype(np.uint32) << 16).view(np.float32)
  flat = np.frombuffer(data, order + dtype)
  return flat.astype(np.float32 if dtype == 'f2' else flat.dtype.newbyteorder('='))


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  # safetensors.numpy.load_file cannot give bfloat16 (numpy has no such dtype), so the header is
  # parsed by safetensors and the bytes decoded here.
  import safetensors

  with open(path, 'rb') as f:
    content = f.read()
  try:
    tensors = safetensors.deserialize(content)
  except safetensors.SafetensorError as e:
    raise UserError(f'{path}: damaged safetensors file ({e})') from None
  out = {}
  for name, tensor in tensors:
    if tensor['dtype'] not in _SAFETENSORS_DTYPES:
      raise UserError(f'{path}: tensor {name!r} has dtype {tensor["dtype"]}; only '
                      f'{", ".join(_SAFETENSORS_DTYPES)} are read')
    out[name] = _decode(tensor['data'], _SAFETENSORS_DTYPES[tensor['dtype']]).reshape(
        tensor['shape'])
  return out


class _StorageType(NamedTuple):
  """What ``torch.FloatStorage`` and its kin unpickle to: just the element dtype."""
  dtype: str


def _rebuild_tensor(storage: Any, offset: Any, size: Any, stride: Any, *unused: Any) -> np.ndarray:
  """``torch._utils._rebuild_tensor_v2``: a copy of a strided view of the storage.

  The unused arguments are requires_grad, backward hooks and (newer torch) metadata.
  """
  if not (isinstance(storage, np.ndarray) and isinstance(size, tuple)
          and isinstance(stride, tuple) and len(size) == len(stride)
          and all(isinstance(n, int) and n >= 0 for n in (offset, *size, *stride))):
    raise ValueError('malformed tensor record')
  # as_strided reads whatever memory it is pointed at: a tensor must lie inside its storage.
  last = offset + sum((n - 1) * s for n, s in zip(size, stride))
  if math.prod(size) and last >= storage.size:
    raise ValueError(f'a tensor of shape {size} reaches past its storage of {storage.size} '
                     'elements')
  view = np.lib.stride_tricks.as_strided(
      storage[offset:], size, [s * storage.itemsize for s in stride], writeable=False)
  return view.copy()


def _rebuild_parameter(data: Any, *unused: Any) -> Any:
  """``torch._utils._rebuild_parameter`` (and ``_with_state``): the parameter's tensor."""
  return data


_ALLOWED = {
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch._utils', '_rebuild_tensor_v2'): _rebuild_tensor,
    ('torch._utils', '_rebuild_parameter'): _rebuild_parameter,
    ('torch._utils', '_rebuild_parameter_with_state'): _rebuild_parameter,
    **{('torch', name): _StorageType(dtype) for name, dtype in _TORCH_STORAGES.items()},
}


class _Unpickler(pickle.Unpickler):
  """Unpickles ``data.pkl`` of a torch zip: allowed names only, storages from the zip."""

  def __init__(self, path: str, archive: zipfile.ZipFile, prefix: str, order: str):
    super().__init__(io.BytesIO(archive.read(f'{prefix}data.pkl')), encoding='utf-8')
    self._path, self._archive, self._prefix, self._order = path, archive, prefix, order
    self._storages: dict[str, np.ndarray] = {}  # by key: views of one storage share it

  def find_class(self, module: str, name: str) -> Any:
    if module == 'torch' and name.endswith('Storage') and (module, name) not in _ALLOWED:
      raise UserError(f'{self._path}: tensors of torch.{name} are not read; only those of '
                      f'torch.{", torch.".join(_TORCH_STORAGES)}')
    if (module, name) not in _ALLOWED:
      raise UserError(f'{self._path}: refusing to unpickle {module}.{name}: only tensors and '
                      'plain containers are read (nothing from the file is executed); '
                      f'{_RESAVE}')
    return _ALLOWED[module, name]

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == 'storage'
            and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)):
      raise ValueError(f'unknown persistent id {pid!r:.80}')
    key = pid[2]
    if key not in self._storages:
      data = self._archive.read(f'{self._prefix}data/{key}')
      self._storages[key] = _decode(data, pid[1].dtype, self._order)
    return self._storages[key]


def _read_torch_zip(path: str) -> Any:
  not_zip = UserError(
      f'{path}: not a torch zip checkpoint (torch.save since torch 1.6), or a truncated one. '
      'The legacy format of older torch is not read: load it with torch and save it again, '
      'torch.save(torch.load(path), path)')
  if not zipfile.is_zipfile(path):
    raise not_zip
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith('/data.pkl') and n.count('/') == 1]
      if len(pickles) != 1:
        raise not_zip
      prefix = pickles[0][:-len('data.pkl')]
      # Older torch wrote no byteorder record; such files are read as little-endian.
      big = f'{prefix}byteorder' in archive.namelist() and archive.read(
          f'{prefix}byteorder') == b'big'
      order = '>' if big else '<'
      return _Unpickler(path, archive, prefix, order).load()
  except UserError:
    raise
  except Exception as e:  # noqa: BLE001 - whatever a damaged or crafted file makes pickle raise
    raise UserError(f'{path}: damaged torch checkpoint ({type(e).__name__}: {e})') from None


def _is_state_dict(obj: Any) -> bool:
  return isinstance(obj, dict) and bool(obj) and all(
      isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items())


def _state_dict(obj: Any, path: str) -> dict[str, np.ndarray]:
  """The flat name -> tensor mapping in an unpickled checkpoint, unwrapped one level."""
  if _is_state_dict(obj):
    return dict(obj)
  for key in ('state_dict', 'model'):
    if isinstance(obj, dict) and _is_state_dict(obj.get(key)):
      return dict(obj[key])
  if isinstance(obj, dict) and obj:
    key, value = next((k, v) for k, v in obj.items()
                      if not (isinstance(k, str) and isinstance(v, np.ndarray)))
    what = f'a mapping whose entry {key!r} is of type {type(value).__name__}'
  elif isinstance(obj, dict):
    what = 'an empty mapping'
  else:
    what = f'an object of type {type(obj).__name__}'
  raise UserError(f'{path}: holds {what}, not a mapping of parameter names to tensors (nor one '
                  f"under 'state_dict' or 'model'); {_RESAVE}")
