"""The logical-axis sharding rules are config data (config.mesh.rules), read by the trainers."""

import functools

import jax
import pytest
from jax.sharding import PartitionSpec as P

from configs import common, tiny_synthetic, tiny_synthetic_grpo
from streampro_jax import models, parallel
from streampro_jax.train import config_check, grpo_trainer, optim, sft
from streampro_jax.train import setup as setup_lib
from streampro_jax.train import state as state_lib

MLP_KERNEL = ("layers_0", "mlp", "gate_proj", "kernel")  # logical axes (embed, mlp)
NO_EMBED_SHARDING = tuple((name, None if name == "embed" else axes)
                          for name, axes in parallel.DEFAULT_RULES)


def _config(rules=None):
  c = tiny_synthetic.get_config()
  c.mesh = common.mesh_config(data=2, fsdp=2, tensor=2, **({} if rules is None else
                                                            {"rules": rules}))
  return c


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _param_specs(config, workdir):
  """{path: PartitionSpec} of the tiny model's parameters as the trainers shard them."""
  tree = config_check.build(config, "sft")
  tokenizer = setup_lib.make_tokenizer(tree, str(workdir))
  model_config = setup_lib.make_model_config(tree.model, tokenizer)
  init_fn = functools.partial(models.backbone_module(model_config).init_params, model_config)
  boxed = jax.eval_shape(init_fn, jax.random.key(0))
  tx = optim.make_optimizer(tree.optim, 10)
  mesh = setup_lib.make_mesh(tree.mesh)
  shardings = state_lib.state_shardings(tx, boxed, mesh, tree.mesh.rules)
  return shardings


def test_default_config_carries_the_default_rules():
  config = tiny_synthetic.get_config()
  assert parallel.rules_from_config(config.mesh) == parallel.DEFAULT_RULES
  # mesh.rules is a key the trainers read: the tree's mesh node holds the resolved table.
  assert config_check.build(config, "sft").mesh.rules == parallel.DEFAULT_RULES
  # A section without rules (a hand-written config) gets the default too.
  assert parallel.rules_from_config({"data": -1}) == parallel.DEFAULT_RULES
  assert config_check.MeshSection.from_config({"data": -1}).rules == parallel.DEFAULT_RULES
  # A rule set's name resolves to its table when the tree is built.
  named = config_check.MeshSection.from_config({"rules": "tensor_in_host_fsdp_across"})
  assert named.rules == parallel._RULE_SETS["tensor_in_host_fsdp_across"]
  # The whole section builds the mesh: rules is not an axis size.
  assert dict(parallel.make_mesh(dict(_config().mesh)).shape) == {"data": 2, "fsdp": 2,
                                                                   "tensor": 2}


def test_changed_rule_in_config_changes_parameter_sharding(tmp_path):
  default = _param_specs(_config(), tmp_path)
  assert _get(default.params, MLP_KERNEL).spec == P("fsdp", "tensor")
  changed = _param_specs(_config(NO_EMBED_SHARDING), tmp_path)
  assert _get(changed.params, MLP_KERNEL).spec == P(None, "tensor")
  # The optimizer state (Adam's mu and nu of that kernel) follows its parameter.
  suffix = "".join(f"['{k}']" for k in MLP_KERNEL)
  moments = [sh.spec for path, sh in jax.tree_util.tree_leaves_with_path(changed.opt_state)
             if jax.tree_util.keystr(path).endswith(suffix)]
  assert moments == [P(None, "tensor")] * 2, moments


@pytest.mark.parametrize("rules,message", [
    ((("embed", "model"),), r"rules\[0\].*mesh axis 'model' is not one of"),
    ((("embed", "fsdp"), ("embed", None)), r"rules\[1\].*'embed' has a rule already"),
    ((("embed",),), r"rules\[0\].*expected a \[logical name, mesh axes\] pair"),
])
def test_bad_rules_name_the_entry(rules, message):
  with pytest.raises(ValueError, match=message):
    parallel.rules_from_config({"data": -1, "rules": rules})
  config = _config()
  config.mesh.rules = rules
  with pytest.raises(ValueError, match=message):  # the tree refuses it before anything is built
    config_check.build(config, "sft")


class _Stop(Exception):
  pass


@pytest.mark.parametrize("trainer", ["sft", "grpo"])
def test_trainers_shard_the_state_with_the_config_rules(trainer, tmp_path, monkeypatch):
  """sft.train and GRPOTrainer pass config.mesh.rules to state.state_shardings (stopped there:
  the test above shows what those rules do to a parameter)."""
  seen = []

  def spy(tx, boxed, mesh, rules=None):
    seen.append(rules)
    raise _Stop

  monkeypatch.setattr(state_lib, "state_shardings", spy)
  if trainer == "sft":
    config = _config(NO_EMBED_SHARDING)
    config.data.num_videos = 8
    run = lambda: sft.train(config, str(tmp_path / "run"))
  else:
    config = tiny_synthetic_grpo.get_config()
    config.mesh = common.mesh_config(data=2, fsdp=2, tensor=2, rules=NO_EMBED_SHARDING)
    config.data.num_videos = 8
    run = lambda: grpo_trainer.GRPOTrainer(config, str(tmp_path / "run"))
  with pytest.raises(_Stop):
    run()
  assert seen == [NO_EMBED_SHARDING]
