"""Issue 21's obscure errors, each named where it starts: config files and their bases, ``--cfg-options``, a model
with fewer classes than its data, the run's settings, and batches of no image in the task models."""
import importlib.util
import textwrap
import warnings

import pytest
import torch

pytest.importorskip('mmengine')
from mmengine.registry import DefaultScope  # noqa: E402
from mmengine.structures import BaseDataElement  # noqa: E402
from visionattn.heads.classification.task import ImageClassifier  # noqa: E402

from visionattn.engine import MODELS, ConfigError, check_config, load_tool_config  # noqa: E402

pytestmark = pytest.mark.tools

DIGITS = 'configs/classification/resnet_attn_digits.py'
SHAPES = 'configs/segmentation/fpn_resnet_attn_synthetic_shapes.py'


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))
    return path


LAZY_TOP = '''
    from mmengine.config import read_base
    with read_base():
        from ._base_.part import *
    z = 2
'''


# ------------------------------------------------------------------------------------------------------------------
# config files


def test_syntax_error_in_the_config_names_its_file_and_line(tmp_path):
    config = _write(tmp_path / 'broken.py', 'a = 1\nb = dict(c=\n')
    with pytest.raises(ConfigError, match=rf'config {tmp_path / "broken.py"}, line 2: SyntaxError') as error:
        load_tool_config(str(config))
    assert 'b = dict(c=' in str(error.value)


@pytest.mark.parametrize('style', ['read_base', '_base_'])
def test_syntax_error_in_a_base_config_names_the_base(tmp_path, style):
    # mmengine said only `File "<unknown>", line 2`.
    _write(tmp_path / '_base_' / 'part.py', 'x = 1\ny = (\n')
    top = _write(tmp_path / 'top.py', LAZY_TOP if style == 'read_base' else "_base_ = ['./_base_/part.py']\nz = 2\n")
    base = tmp_path / '_base_' / 'part.py'
    with pytest.raises(ConfigError, match=rf'config {base}, line 2 \(a base config of {top}\): SyntaxError'):
        load_tool_config(str(top))


def test_error_running_a_base_config_and_a_missing_base_are_named(tmp_path):
    base = _write(tmp_path / '_base_' / 'part.py', 'x = 1\ny = undefined_name + 1\n')
    top = _write(tmp_path / 'top.py', LAZY_TOP)
    with pytest.raises(ConfigError, match=rf"config {base}, line 2 .*NameError: name 'undefined_name'"):
        load_tool_config(str(top))
    base.unlink()
    with pytest.raises(ConfigError, match=rf'config {top}, line 4: its base config \._base_\.part is not a file'):
        load_tool_config(str(top))


# ------------------------------------------------------------------------------------------------------------------
# --cfg-options


def _train_tool():
    spec = importlib.util.spec_from_file_location('train_tool', 'tools/train.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cfg_options_token_without_equals_names_the_token():
    # mmengine's DictAction failed with "not enough values to unpack (expected 2, got 1)".
    with pytest.raises(SystemExit, match=r"--cfg-options 'train_cfg\.max_epochs' is not KEY=VALUE"):
        _train_tool().main([DIGITS, '--cfg-options', 'train_cfg.max_epochs'])


def test_cfg_options_value_of_another_kind_names_the_key_and_both_kinds():
    with pytest.raises(ConfigError, match=r"train_cfg\.max_epochs='abc': the config has int 6 there, and the value "
                                          r"given is str 'abc'"):
        load_tool_config(DIGITS, ['train_cfg.max_epochs=abc'])
    with pytest.raises(ConfigError, match=r"resume='yes': the config has bool False"):
        load_tool_config(DIGITS, ['resume=yes'])
    with pytest.raises(ConfigError, match=r'model\.num_classes: cannot read the value .*Imbalanced'):
        load_tool_config(DIGITS, ['model.num_classes=[1,2'])


def test_cfg_options_unknown_key_is_refused_with_close_matches():
    # It was added silently beside train_cfg.max_epochs, and the run trained for the config's 6 epochs.
    with pytest.raises(ConfigError, match=r"train_cfg has no key 'max_epoch' \(did you mean max_epochs.*\+train_cfg"):
        load_tool_config(DIGITS, ['train_cfg.max_epoch=1'])
    with pytest.raises(ConfigError, match=r"train_dataloader has no key 'datset' \(did you mean dataset\?\)"):
        load_tool_config(DIGITS, ['train_dataloader.datset.max_samples=8'])
    with pytest.raises(ConfigError, match=r"optim_wrapper\.optimizer has no key 'lrr' \(did you mean lr\?\)"):
        load_tool_config(DIGITS, ['optim_wrapper.optimizer.lrr=1e-3'])
    with pytest.raises(ConfigError, match=r'custom_hooks has 5 entries \(indices 0\.\.4\), there is no entry 9'):
        load_tool_config(DIGITS, ['custom_hooks.9.priority=1'])
    with pytest.raises(ConfigError, match=r"model\.backbone is str 'eca_resnet18', not a section"):
        load_tool_config(DIGITS, ['model.backbone.depth=50'])
    cfg = load_tool_config(DIGITS, ['+train_cfg.max_epoch=1'])  # the documented way to add a key
    assert cfg.train_cfg.max_epoch == 1


def test_cfg_options_key_that_the_section_class_takes_is_added_quietly():
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        cfg = load_tool_config(DIGITS, ['train_dataloader.dataset.max_samples=8', 'work_dir=a dir/with spaces',
                                        'train_dataloader.shuffle=False', 'randomness.seed=3'])
    assert cfg.train_dataloader.dataset.max_samples == 8
    assert cfg.work_dir == 'a dir/with spaces'  # mmengine's parser made it 'adir/withspaces'


def test_cfg_options_top_level_variable_is_refused_naming_where_it_was_used():
    # num_classes=5 changed nothing: model.num_classes had taken the value when the file was read.
    with pytest.raises(ConfigError, match=r'num_classes is a variable of the config file.*changes nothing.*'
                                          r'model\.num_classes'):
        load_tool_config(DIGITS, ['num_classes=5'])


# ------------------------------------------------------------------------------------------------------------------
# the model against its data


def test_classifier_with_fewer_classes_than_the_digits_fails_at_the_config_check():
    cfg = load_tool_config(DIGITS, ['model.num_classes=5'])
    with pytest.raises(ConfigError, match=r'model\.num_classes=5, but train_dataloader\.dataset \(DigitsDataset\) has '
                                          r'10 classes .*--cfg-options model\.num_classes=10'):
        check_config(cfg)


def test_classifier_with_fewer_classes_than_an_image_folder(tmp_path):
    for split in ('train', 'val'):
        for name in ('a', 'b', 'c'):
            (tmp_path / split / name).mkdir(parents=True)
    roots = [f'{loader}_dataloader.dataset.data_root={tmp_path}' for loader in ('train', 'val', 'test')]
    cfg = load_tool_config('configs/classification/eca_resnet50_8xb32-100e_in1k.py', [*roots, 'model.num_classes=2'])
    with pytest.raises(ConfigError, match=r'model\.num_classes=2, but .*ImageFolderDataset\) has 3 classes'):
        check_config(cfg)


def test_segmentor_with_fewer_classes_than_its_dataset_fails_at_the_config_check():
    cfg = load_tool_config(SHAPES, ['model.num_classes=2', 'model.network.num_classes=2'])
    with pytest.raises(ConfigError, match=r'has 4 classes .*model\.network\.num_classes=4'):
        check_config(cfg)


def test_label_beyond_num_classes_is_named_in_the_loss():
    # Issue 21: "Target 7 is out of bounds" at the first step (a device-side assert on GPUs).
    model = ImageClassifier('eca_resnet18', num_classes=5)
    samples = [BaseDataElement(gt_label=torch.tensor(label)) for label in (0, 7)]
    with pytest.raises(ValueError, match=r'label of this batch is 7, but the classifier has model\.num_classes=5'):
        model(torch.randn(2, 3, 32, 32), samples, mode='loss')


def test_mask_label_beyond_num_classes_is_named_in_the_loss():
    cfg = load_tool_config(SHAPES, ['model.num_classes=2', 'model.network.num_classes=2'])
    with DefaultScope.overwrite_default_scope('visionattn'):
        model = MODELS.build(cfg.model)
    mask = torch.zeros(32, 32, dtype=torch.long)
    mask[:4, :4] = 3
    samples = [BaseDataElement(gt_sem_seg=mask)]
    with pytest.raises(ValueError, match=r'holds label 3, but model\.num_classes=2'):
        model(torch.randn(1, 3, 32, 32), samples, mode='loss')


# ------------------------------------------------------------------------------------------------------------------
# the run's settings (sweep)


@pytest.mark.parametrize('option, message', [
    ('train_cfg.max_epochs=0', r'train_cfg\.max_epochs=0 must be at least 1 \(nothing would be trained\)'),
    ('train_cfg.val_interval=0', r'train_cfg\.val_interval=0 must be at least 1'),  # was a ZeroDivisionError
])
def test_run_lengths_below_one_are_refused(option, message):
    with pytest.raises(ConfigError, match=message):
        check_config(load_tool_config(DIGITS, [option]))


def test_work_dir_that_is_a_file_and_load_from_a_folder_are_named(tmp_path):
    afile = tmp_path / 'afile'
    afile.write_text('x')
    with pytest.raises(ConfigError, match=r"work_dir '.*afile' is a file, not a folder"):
        check_config(load_tool_config(DIGITS, work_dir=str(afile)))
    run = tmp_path / 'run'
    run.mkdir()
    (run / 'epoch_3.pth').write_bytes(b'')
    (run / 'epoch_12.pth').write_bytes(b'')
    with pytest.raises(ConfigError, match=r"'.*run' is a folder, not a checkpoint file: the latest checkpoint in it is "
                                          r'.*epoch_12\.pth'):
        check_config(load_tool_config(DIGITS, [f'load_from={run}']))
    with pytest.raises(ConfigError, match=r"'.*nothere\.pth' does not exist"):
        check_config(load_tool_config(DIGITS, [f'load_from={tmp_path / "nothere.pth"}']))


def test_missing_sections_and_unregistered_type_names_are_named():
    # mmengine: a bare KeyError 'model'; for training, all four sections named once the model is built; a misspelt
    # registry name (a hook's, a metric's) only when that part is built, after the first epoch for a metric.
    from mmengine.config import Config
    with pytest.raises(ConfigError, match='the config has no model section'):
        check_config(Config(dict(default_scope='visionattn')), mode='test')
    with pytest.raises(ConfigError, match='model has no type: name the task model class'):
        check_config(Config(dict(model=dict(backbone='eca_resnet18'))), mode='train')
    cfg = load_tool_config(DIGITS)
    cfg.optim_wrapper = None
    check_config(cfg, mode='test')
    with pytest.raises(ConfigError, match='to train, the config needs .*; it has no optim_wrapper'):
        check_config(cfg, mode='train')
    for option, message in (('val_evaluator.type=Acuracy', r"val_evaluator\.type='Acuracy' .*did you mean Accuracy"),
                            ('model.type=ImageClasifier', r'did you mean ImageClassifier')):
        with pytest.raises(ConfigError, match=message):
            check_config(load_tool_config(DIGITS, [option]))


def test_data_loader_without_a_batch_is_named():
    # mmengine's scheduler asserted "`epoch_length` must be a positive integer, but got 0", its sampler divided by 0.
    from types import SimpleNamespace

    from torch.utils.data import DataLoader, TensorDataset

    from visionattn.engine.config_checks import check_batches
    small = DataLoader(TensorDataset(torch.zeros(32, 1)), batch_size=64, drop_last=True)
    with pytest.raises(ConfigError, match=r'train_dataloader gives no batch: its dataset \(TensorDataset\) has 32 '
                                          r'items, fewer than train_dataloader\.batch_size=64 with drop_last=True'):
        check_batches(SimpleNamespace(dataloader=small), 'train_dataloader')
    empty = DataLoader(TensorDataset(torch.zeros(0, 1)), batch_size=4)
    with pytest.raises(ConfigError, match=r'val_dataloader\.dataset \(TensorDataset\) is empty'):
        check_batches(SimpleNamespace(dataloader=empty), 'val_dataloader')


# ------------------------------------------------------------------------------------------------------------------
# batches of no image in the task models


SMOKE_CONFIGS = [
    DIGITS, SHAPES, 'configs/segmentation/paratranscnn_synthetic_slices.py',
    'configs/detection/focus_detr_r18_synthetic_shapes.py', 'configs/reid/source_r18_synthetic.py',
    'configs/reid/core_reid_r18_synthetic.py', 'configs/compression/s2lic_tiny_skimage-64_cpu.py',
    'configs/diffusion/pixart_tiny_synthetic_pairs.py', 'configs/diffusion/lamamba_diff_tiny_synthetic_pairs.py',
]


@pytest.mark.parametrize('config', SMOKE_CONFIGS)
def test_task_models_take_an_empty_batch_alike(config):
    # Issue 21: "empty batches behave differently in every family": a NaN loss, "stack expects a non-empty
    # TensorList", "Non-empty 4D data tensor expected", a reshape of 0 elements, or a message about a missing label.
    with DefaultScope.overwrite_default_scope('visionattn'):
        model = MODELS.build(load_tool_config(config).model)
    empty = torch.zeros(0, 3, 64, 64)
    with torch.no_grad():
        assert model(empty, [], mode='predict') == []
    with pytest.raises(ValueError, match=r"mode='loss' got an empty batch \(0 images\)"):
        model(empty, [], mode='loss')
    with torch.no_grad():
        try:
            out = model(empty, [], mode='tensor')
        except ValueError as error:
            assert "mode='tensor' got an empty batch (0 images)" in str(error)
        else:
            outs = out.values() if isinstance(out, dict) else [out]
            assert all(t.shape[0] == 0 for t in outs if torch.is_tensor(t))


def _collates():
    import visionattn.heads.compression.task  # noqa: F401  (registers their collates)
    import visionattn.heads.diffusion.task  # noqa: F401

    from visionattn.engine import FUNCTIONS
    return sorted(name for name in FUNCTIONS.module_dict if name.endswith('collate'))


@pytest.mark.parametrize('name', _collates())
def test_every_collate_names_an_empty_batch(name):
    # cls_collate failed with "stack expects a non-empty TensorList"; the other tasks' collates named it.
    from visionattn.engine import FUNCTIONS
    with pytest.raises(ValueError, match='collate got an empty batch'):
        FUNCTIONS.get(name)([])


def test_classifier_on_an_empty_batch_whatever_the_backbone():
    # timm's EfficientViT-M fails on an empty batch by itself (tests/test_adopted.py); the task model does not.
    model = ImageClassifier('efficientvit_m0', num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.zeros(0, 3, 224, 224)).shape == (0, 3)
        assert model(torch.zeros(0, 3, 224, 224), None, mode='predict') == []
