from pathlib import Path

import pytest
import yaml

from cxrseg.config import DEMO_TASKS, check_task_settings, parse_recipe, save_recipe
from cxrseg.errors import RecipeError
from cxrseg.labels import CHESTXDET, LabelSet

RECIPES = sorted(Path("recipe").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_parses(path):
    recipe = parse_recipe(["--config", str(path)])
    assert recipe.training.output_dir
    assert recipe.resolved["task"] in (None, *DEMO_TASKS)


def _write(tmp_path, text):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    return str(path)


def test_precedence_default_yaml_cli(tmp_path):
    config = _write(tmp_path, "learning_rate: 2.0e-4\nimage_size: 256\nmodel_name_or_path: some/model\n")
    recipe = parse_recipe(["--config", config, "--learning_rate", "5e-5"])
    assert recipe.training.learning_rate == 5e-5  # CLI beats YAML
    assert recipe.data.image_size == 256  # YAML beats default
    assert recipe.data.augmentation == "standard"  # default
    recipe = parse_recipe(["--config", config, "--image_size=128"])
    assert recipe.data.image_size == 128


def test_yaml_exponent_without_dot_is_still_a_float(tmp_path):
    # PyYAML reads 2e-5 as a string; the parser converts it with the field's type.
    recipe = parse_recipe(["--config", _write(tmp_path, "learning_rate: 2e-5\n")])
    assert recipe.training.learning_rate == pytest.approx(2e-5)


def test_unknown_yaml_key_names_key_and_file(tmp_path):
    config = _write(tmp_path, "learning_rat: 1.0e-4\n")
    with pytest.raises(RecipeError, match=r"'learning_rat'.*r\.yaml"):
        parse_recipe(["--config", config])


def test_unknown_cli_key_is_an_error(tmp_path):
    with pytest.raises(RecipeError, match=r"'negative_keep'.*command line"):
        parse_recipe(["--config", _write(tmp_path, "{}\n"), "--negative_keep", "0.1"])


def test_bool_false_is_false(tmp_path):
    recipe = parse_recipe(["--config", _write(tmp_path, "balanced_sampling: true\n"), "--balanced_sampling", "false"])
    assert recipe.sampling.balanced_sampling is False


def test_class_weights_forms(tmp_path):
    assert parse_recipe(["--config", _write(tmp_path, "class_weights: [0.5, 54.2]\n")]).loss.class_weights == [
        0.5,
        54.2,
    ]
    assert parse_recipe(["--class_weights", "0.5,54.2"]).loss.class_weights == [0.5, 54.2]
    assert parse_recipe(["--class_weights", "auto"]).loss.class_weights == "auto"
    assert parse_recipe([]).loss.class_weights is None


def test_saved_recipe_reproduces_the_run(tmp_path):
    config = _write(tmp_path, "learning_rate: 3.0e-4\nnegative_keep_ratio: 0.15\nhub_token: secret123\n")
    recipe = parse_recipe(["--config", config, "--num_train_epochs", "7"])
    save_recipe(recipe, tmp_path / "recipe.yaml")
    text = (tmp_path / "recipe.yaml").read_text()
    assert "secret123" not in text
    again = parse_recipe(["--config", str(tmp_path / "recipe.yaml")])
    assert again.resolved == recipe.resolved
    assert again.training.num_train_epochs == 7
    assert yaml.safe_load(text)["negative_keep_ratio"] == 0.15


def test_the_recipe_is_checked_against_the_data_label_set(tmp_path):
    lungs = LabelSet("lungs", ("background", "lung", "heart"), multilabel=False)
    assert parse_recipe(["--task", "lungs"]).model.task == "lungs"  # any name: the data decides
    assert parse_recipe([]).model.task is None
    assert parse_recipe(["--config", "recipe/chestxdet_demo.yaml", "--task", "null"]).model.task is None
    check_task_settings(parse_recipe([]), lungs)  # no task: the data's
    check_task_settings(parse_recipe(["--task", "lungs"]), lungs)
    with pytest.raises(RecipeError, match=r"task is 'pneumothorax' but .* declares lungs \(background, lung, heart"):
        check_task_settings(parse_recipe(["--task", "pneumothorax"]), lungs)
    config = _write(tmp_path, "negative_keep_ratio: 0.15\n")
    with pytest.raises(RecipeError, match="class_balance_power"):
        check_task_settings(parse_recipe(["--config", config]), CHESTXDET)
    with pytest.raises(RecipeError, match=r"balance_classes names \['nodule'\]"):
        check_task_settings(parse_recipe(["--balance_classes", "heart,nodule"]), lungs)
    assert parse_recipe(["--balance_classes", "heart, lung"]).sampling.balance_classes == ["heart", "lung"]
    with pytest.raises(RecipeError, match="task must be a name"):
        parse_recipe(["--task", ""])


def test_null_on_the_command_line_unsets_keys_that_accept_it(tmp_path):
    config = _write(tmp_path, "model_name_or_path: some/model\nmax_train_samples: 8\nclass_weights: auto\n")
    tiny = '{"backbone_config": {"model_type": "swin"}}'
    recipe = parse_recipe(
        [
            "--config",
            config,
            "--model_name_or_path",
            "null",
            "--model_config",
            tiny,
            "--max_train_samples=null",
            "--class_weights",
            "null",
            "--save_total_limit",
            "null",
            "--resume_from_checkpoint",
            "null",
        ]
    )
    assert recipe.model.model_name_or_path is None  # not a Hub repo named "null"
    assert recipe.data.max_train_samples is None
    assert recipe.loss.class_weights is None
    assert recipe.training.save_total_limit is None  # RECIPE_DEFAULTS' 2 unset: keep every checkpoint
    assert recipe.resolved["model_name_or_path"] is None
    save_recipe(recipe, tmp_path / "recipe.yaml")  # the saved recipe reproduces the nulls
    assert parse_recipe(["--config", str(tmp_path / "recipe.yaml")]).resolved == recipe.resolved
    # A key that cannot be null stays an error naming the key; null without model_config is the model check's error.
    with pytest.raises(RecipeError, match="image_size"):
        parse_recipe(["--image_size", "null"])
    with pytest.raises(RecipeError, match="model_config"):
        parse_recipe(["--model_name_or_path", "null"])


def test_the_demo_tasks_a_recipe_may_name_are_the_demo_makers():
    from cxrseg.synthetic import DEMO_DATA_MAKERS

    assert list(DEMO_TASKS) == list(DEMO_DATA_MAKERS)


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_on_the_cpu_only_where_it_has_bf16_instructions(monkeypatch, native):
    """mixed_precision: auto trains a use_cpu recipe in bf16 on a CPU with bf16 instructions (1.4x per step for the
    demo) and in fp32 where torch would emulate bf16 (slower); an explicit "no" stays fp32 everywhere."""
    import torch

    import cxrseg.config

    monkeypatch.setattr(cxrseg.config, "cpu_has_native_bf16", lambda: native)
    demo = parse_recipe(["--config", "recipe/demo.yaml", "--mixed_precision", "auto"]).training
    assert (demo.bf16, demo.fp16, demo.tf32) == (native, False, False)
    assert not parse_recipe(["--config", "recipe/demo.yaml", "--mixed_precision", "no"]).training.bf16
    # a recipe that sets use_cpu on the command line counts as training on the CPU too
    basic = parse_recipe(["--config", "recipe/basic.yaml", "--use_cpu"]).training
    assert basic.bf16 == native and basic.use_cpu
    if not torch.cuda.is_available():  # without use_cpu, TrainingArguments would refuse bf16 on the CPU: fp32
        assert not parse_recipe(["--config", "recipe/basic.yaml"]).training.bf16
