"""Weights files read without torch: torch zips written by hand here, safetensors, refusals."""

import collections
import io
import json
import os
import pickle
import struct
import sys
import types
import zipfile
from typing import Any, NamedTuple
from unittest import mock

import numpy as np
import pytest
from safetensors.numpy import save_file

from unet_jax.errors import UserError
from unet_jax.weights_file import read_state_dict

_STORAGE_TYPES = {np.dtype('float32'): 'FloatStorage', np.dtype('float16'): 'HalfStorage',
                  np.dtype('int64'): 'LongStorage', np.dtype('float64'): 'DoubleStorage'}


def _fake_torch() -> dict[str, types.ModuleType]:
  """Modules named like torch's, so that pickle writes the GLOBALs torch.save writes."""
  torch, utils = types.ModuleType('torch'), types.ModuleType('torch._utils')

  def _rebuild_tensor_v2(*args):
    raise AssertionError('only pickled, never called')

  _rebuild_tensor_v2.__module__ = 'torch._utils'
  _rebuild_tensor_v2.__qualname__ = '_rebuild_tensor_v2'
  utils._rebuild_tensor_v2 = _rebuild_tensor_v2
  for name in [*_STORAGE_TYPES.values(), 'BFloat16Storage', 'ComplexFloatStorage']:
    setattr(torch, name, type(name, (), {'__module__': 'torch'}))
  return {'torch': torch, 'torch._utils': utils}


class Storage(NamedTuple):
  type_name: str
  key: str
  data: bytes


class Tensor(NamedTuple):
  """What torch.save pickles for a tensor: a view of a storage."""
  storage: Storage
  offset: int
  size: tuple[int, ...]
  stride: tuple[int, ...]

  def __reduce__(self):
    rebuild = sys.modules['torch._utils']._rebuild_tensor_v2
    return rebuild, (self.storage, self.offset, self.size, self.stride, False,
                     collections.OrderedDict())


def tensor(array: np.ndarray, key: str, byteorder: str = '<') -> Tensor:
  """A contiguous tensor with its own storage."""
  data = array.astype(array.dtype.newbyteorder(byteorder)).tobytes()
  storage = Storage(_STORAGE_TYPES[array.dtype], key, data)
  strides = tuple(s // array.itemsize for s in array.strides)
  return Tensor(storage, 0, array.shape, strides)


class _Pickler(pickle.Pickler):

  def __init__(self, file, storages):
    super().__init__(file, protocol=2)
    self.storages = storages

  def persistent_id(self, obj):
    if not isinstance(obj, Storage):
      return None
    self.storages[obj.key] = obj.data
    torch = sys.modules['torch']
    # The last field is torch's element count, which the reader does not need.
    return ('storage', getattr(torch, obj.type_name), obj.key, 'cpu', len(obj.data))


def save_like_torch(path, obj, byteorder='little') -> str:
  """Writes ``obj`` (of Tensors) as torch.save's zip format does."""
  archive = 'archive'  # torch names it after the file; the reader takes whatever is there
  storages, buffer = {}, io.BytesIO()
  with mock.patch.dict(sys.modules, _fake_torch()):
    _Pickler(buffer, storages).dump(obj)
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr(f'{archive}/data.pkl', buffer.getvalue())
    z.writestr(f'{archive}/byteorder', byteorder)
    z.writestr(f'{archive}/version', '3\n')
    for key, data in storages.items():
      z.writestr(f'{archive}/data/{key}', data)
  return str(path)


@pytest.fixture
def arrays():
  rng = np.random.default_rng(0)
  return {'conv.weight': rng.normal(size=(2, 3, 3, 3)).astype(np.float32),
          'bn.running_var': rng.normal(size=3).astype(np.float16),
          'bn.num_batches_tracked': np.array(7, np.int64)}


@pytest.mark.parametrize('extension', ['.pth', '.pt', '.bin'])
def test_torch_zip_round_trip(tmp_path, arrays, extension):
  state = collections.OrderedDict(
      (name, tensor(a, str(i))) for i, (name, a) in enumerate(arrays.items()))
  got = read_state_dict(save_like_torch(tmp_path / f'w{extension}', state))
  assert list(got) == list(arrays)
  for name, want in arrays.items():
    assert got[name].dtype == (np.float32 if want.dtype == np.float16 else want.dtype), name
    np.testing.assert_array_equal(got[name], want.astype(got[name].dtype), err_msg=name)


def test_views_with_stride_and_offset_share_a_storage(tmp_path):
  base = np.arange(24, dtype=np.float32)
  storage = tensor(base, '0').storage
  state = {'transposed': Tensor(storage, 0, (4, 6), (1, 4)),  # a (6, 4) matrix's .t()
           'sliced': Tensor(storage, 5, (3, 2), (6, 2))}
  got = read_state_dict(save_like_torch(tmp_path / 'w.pth', state))
  np.testing.assert_array_equal(got['transposed'], base.reshape(6, 4).T)
  np.testing.assert_array_equal(got['sliced'], [[base[5 + 6 * i + 2 * j] for j in range(2)]
                                                for i in range(3)])
  assert got['transposed'].flags.c_contiguous and got['transposed'].flags.writeable


def test_big_endian_storages(tmp_path, arrays):
  state = {name: tensor(a, str(i), '>') for i, (name, a) in enumerate(arrays.items())}
  got = read_state_dict(save_like_torch(tmp_path / 'w.pth', state, byteorder='big'))
  for name, want in arrays.items():
    assert got[name].dtype.isnative, name
    np.testing.assert_array_equal(got[name], want.astype(got[name].dtype), err_msg=name)


def test_bfloat16_widened_to_float32(tmp_path):
  want = np.array([1.5, -2.0, 0.15625, 2.0**127], np.float32)  # exact in bfloat16
  bits = (want.view(np.uint32) >> 16).astype('<u2')
  state = {'w': Tensor(Storage('BFloat16Storage', '0', bits.tobytes()), 0, (4,), (1,))}
  got = read_state_dict(save_like_torch(tmp_path / 'w.pth', state))
  assert got['w'].dtype == np.float32
  np.testing.assert_array_equal(got['w'], want)


@pytest.mark.parametrize('wrapper', ['state_dict', 'model'])
def test_wrapped_checkpoint_unwrapped(tmp_path, wrapper):
  w = np.ones((2, 2), np.float32)
  checkpoint = {wrapper: {'w': tensor(w, '0')}, 'epoch': 3, 'optimizer': {'lr': 0.1}}
  got = read_state_dict(save_like_torch(tmp_path / 'w.pth', checkpoint))
  assert list(got) == ['w']
  np.testing.assert_array_equal(got['w'], w)


def test_safetensors_round_trip(tmp_path, arrays):
  path = str(tmp_path / 'w.safetensors')
  save_file(arrays, path)
  got = read_state_dict(path)
  assert set(got) == set(arrays)
  for name, want in arrays.items():
    assert got[name].dtype == (np.float32 if want.dtype == np.float16 else want.dtype), name
    np.testing.assert_array_equal(got[name], want.astype(got[name].dtype), err_msg=name)


def test_safetensors_bfloat16(tmp_path):
  want = np.array([[1.5, -2.0], [0.15625, 8.0]], np.float32)
  data = (want.view(np.uint32) >> 16).astype('<u2').tobytes()
  header = json.dumps({'w': {'dtype': 'BF16', 'shape': [2, 2], 'data_offsets': [0, len(data)]}})
  path = tmp_path / 'w.safetensors'  # the format: header length, JSON header, bytes
  path.write_bytes(struct.pack('<Q', len(header)) + header.encode() + data)
  np.testing.assert_array_equal(read_state_dict(path)['w'], want)


class _Call(NamedTuple):
  """Pickles as a call ``fn(arg)``, the way a malicious file runs code."""
  fn: Any
  arg: str

  def __reduce__(self):
    return self.fn, (self.arg,)


@pytest.mark.parametrize('fn, command, name', [
    (os.system, 'touch {}', f'{os.system.__module__}.system'),
    # Protocol 2, as torch writes, spells builtins the Python 2 way.
    (eval, '__import__("pathlib").Path({!r}).touch()', '__builtin__.eval'),
])
def test_malicious_pickle_refused_and_not_run(tmp_path, fn, command, name):
  marker = tmp_path / 'marker'
  payload = pickle.dumps({'w': _Call(fn, command.format(str(marker)))}, protocol=2)
  pickle.loads(payload)
  assert marker.exists(), 'the payload runs under a plain unpickler'
  marker.unlink()
  path = tmp_path / 'w.pth'
  with zipfile.ZipFile(path, 'w') as z:
    z.writestr('archive/data.pkl', payload)
  with pytest.raises(UserError, match=f'refusing to unpickle {name}: .*nothing from the file is '
                     'executed'):
    read_state_dict(path)
  assert not marker.exists()


def test_tensor_past_its_storage_refused(tmp_path):
  storage = tensor(np.zeros(4, np.float32), '0').storage
  path = save_like_torch(tmp_path / 'w.pth', {'w': Tensor(storage, 2, (2, 2), (2, 1))})
  with pytest.raises(UserError, match='damaged torch checkpoint .*reaches past its storage'):
    read_state_dict(path)


def test_unread_dtype_refused(tmp_path):
  state = {'w': Tensor(Storage('ComplexFloatStorage', '0', bytes(16)), 0, (2,), (1,))}
  with pytest.raises(UserError, match='tensors of torch.ComplexFloatStorage are not read'):
    read_state_dict(save_like_torch(tmp_path / 'w.pth', state))


def test_truncated_zip_refused(tmp_path, arrays):
  path = save_like_torch(tmp_path / 'w.pth', {'w': tensor(arrays['conv.weight'], '0')})
  with open(path, 'rb') as f:
    content = f.read()
  with open(path, 'wb') as f:
    f.write(content[:len(content) // 2])
  with pytest.raises(UserError, match='w.pth: not a torch zip checkpoint'):
    read_state_dict(path)


def test_non_zip_refused_with_the_legacy_format_named(tmp_path):
  path = tmp_path / 'w.pth'
  path.write_bytes(pickle.dumps({'w': [1.0, 2.0]}))  # like torch's pre-1.6 files, a bare pickle
  with pytest.raises(UserError, match='not a torch zip checkpoint.*legacy format.*torch.save'):
    read_state_dict(path)


@pytest.mark.parametrize('obj, what', [
    ([np.zeros(2, np.float32)], 'an object of type list'),
    ({'w': np.zeros(2, np.float32), 'epoch': 3}, "a mapping whose entry 'epoch' is of type int"),
    ({}, 'an empty mapping'),
])
def test_not_a_state_dict_refused(tmp_path, obj, what):
  def as_tensors(x):
    return tensor(x, str(id(x))) if isinstance(x, np.ndarray) else x

  obj = [as_tensors(x) for x in obj] if isinstance(obj, list) else {
      k: as_tensors(v) for k, v in obj.items()}
  path = save_like_torch(tmp_path / 'w.pth', obj)
  with pytest.raises(UserError, match=f'w.pth: holds {what}, not a mapping of parameter names'):
    read_state_dict(path)


def test_unknown_extension_refused(tmp_path):
  path = tmp_path / 'w.npz'
  path.write_bytes(b'')
  with pytest.raises(UserError, match=r"w.npz: unknown weights file extension '.npz'.*\.pth"):
    read_state_dict(path)


def test_missing_file_refused(tmp_path):
  with pytest.raises(UserError, match='w.pth: no such weights file'):
    read_state_dict(tmp_path / 'w.pth')


def test_damaged_safetensors_refused(tmp_path):
  path = tmp_path / 'w.safetensors'
  path.write_bytes(b'not safetensors')
  with pytest.raises(UserError, match='w.safetensors: damaged safetensors file'):
    read_state_dict(path)


def test_real_torch_save(tmp_path):
  torch = pytest.importorskip('torch', reason='torch is not installed: files written by hand only')
  generator = torch.Generator().manual_seed(0)
  state = {'linear.weight': torch.randn(3, 4, generator=generator).t(),
           'linear.bias': torch.randn(4, generator=generator).half(),
           'emb.weight': torch.randn(2, 3, generator=generator).bfloat16(),
           'sliced': torch.arange(10.0)[2:8:2],
           'bn.num_batches_tracked': torch.tensor(5)}
  path = str(tmp_path / 'w.pth')
  torch.save(state, path)
  got = read_state_dict(path)
  assert list(got) == list(state)
  for name, want in state.items():
    want = want.float() if want.is_floating_point() else want
    assert got[name].dtype == want.numpy().dtype, name
    np.testing.assert_array_equal(got[name], want.numpy(), err_msg=name)
