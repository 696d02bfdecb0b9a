"""Every module names its public API in `__all__`, and a public name has a reader (issue 29, 6).

For every module of streampro_jax/ (package `__init__`s aside; their `__all__` is pinned by
tests/test_public_api.py):
  - it assigns `__all__` once at top level, a literal list of strings;
  - every top-level name it defines (function, class, assignment, also under a top-level
    `if` / `try`) that is not underscored is in its `__all__`;
  - every name in its `__all__` is defined by the module itself (no re-exports);
  - every name in its `__all__` is read by another file of streampro_jax/, launch/, benchmarks/
    or configs/ (tests aside), or is listed in PROTOCOLS or USER_API below with its reason.
    A name used only inside its module is internal: underscore it (tests may read underscored
    names).

A read is found in the AST of the other file: `from m import name`, or an attribute chain that
resolves to `m.name` through the file's imports (`import a.b as x; x.name`, `from a import b;
b.name`, `a.b.name`); a name a package `__init__` re-exports (`from m import name` there) read
as `package.name` is a read of `m.name`, and the re-export itself is not one (a package's
`__all__` does not make a name used).
"""

import ast
import os

import pytest

from helpers import source_files  # pylint: disable=g-bad-import-order

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "streampro_jax"
READERS = ("streampro_jax", "launch", "benchmarks", "configs")

# Modules another helper of issue 29 is converting at the same time; the lead empties this set
# when their branches are merged (the rule then holds for every module).
_PENDING = frozenset()

# The names every backbone module provides (the protocol in streampro_jax/models/__init__.py's
# docstring): callers reach them through `backbone_module(x).<name>` and
# `getattr(module, "<Name>Config")`, which no static walk can follow.
_BACKBONE = "backbone protocol (streampro_jax/models/__init__.py), reached via backbone_module"
_BACKBONE_PROTOCOL = {
    name: _BACKBONE
    for name in ("MODEL_TYPE", "TextConfig", "VisionConfig", "tiny_config", "init_params",
                 "get_rope_index", "chunk_position_ids", "hf_key_map", "load_hf_checkpoint",
                 "save_hf_checkpoint", "video_processor_config")}
PROTOCOLS: dict[str, dict[str, str]] = {
    "streampro_jax.models.qwen2_5_vl": dict(_BACKBONE_PROTOCOL, Qwen2_5_VLConfig=_BACKBONE,
                                            Qwen2_5_VL=_BACKBONE),
    "streampro_jax.models.qwen3_vl": dict(_BACKBONE_PROTOCOL, Qwen3_VLConfig=_BACKBONE,
                                          Qwen3_VL=_BACKBONE,
                                          qwen3_vl_4b_config="train/aot.py reads it through "
                                          "backbone_module (the Qwen3-VL-4B architecture)"),
}

# User API: names no file of the package, launch/, benchmarks/ or configs/ reads, kept public
# because users call them directly (the entry points of docs/architecture.md#public-api, the
# already-jitted functions a module docstring offers, the judge interface and constructors, the
# live session); module -> {name: why}.
_ENTRY_POINT = "an entry point of docs/architecture.md#public-api"
_SAMPLING = ("the sampling layer's public face, re-exported by streampro_jax.sampling "
             "(its __all__ is pinned by tests/test_public_api.py)")
_OWN_LOOP = "an un-jitted piece for one's own training loop (docs/components.md)"
_CONFIG_NODE = ("a node of the typed config tree that config_check.build returns (a trainer reads "
                "run.tree.<section>)")
USER_API: dict[str, dict[str, str]] = {
    "streampro_jax.bench.pauc": {"turn_score": _ENTRY_POINT + " (PAUC of one example)"},
    "streampro_jax.bench.streampro_f1": {
        "score_qa": _ENTRY_POINT + " (StreamPro-F1 of one QA, to score own predictions)",
        "aggregate": _ENTRY_POINT + " (the dimension scores from per-task F1)",
    },
    "streampro_jax.judges": {
        "Judge": "the interface a judge implements (score_answers, check_rubric, stats), which "
                 "rewards, bench and the GRPO trainer accept",
        "JudgeStats": "the type of Judge.stats, which a judge of one's own creates",
        "OpenAIJudge": "a judge one constructs (docs/components.md); scores.json names its class",
        "OpenAIJudgeConfig": "OpenAIJudge's settings (docs/components.md)",
        "LocalLMJudge": "a judge one constructs (docs/components.md); scores.json names its class",
    },
    "streampro_jax.live": {
        "LiveSession": "what LiveModel.new_session() returns: one stream's session, whose methods "
                       "launch/serve.py and launch/stream.py call",
    },
    "streampro_jax.losses": {
        "cross_entropy_loss": _ENTRY_POINT,
        "focal_stream_loss": _ENTRY_POINT,
        "STATIC_ARGNAMES": "what to pass as static_argnames when jitting a loss (the module "
                           "docstring; the error for a traced static argument names it)",
        "cb_stream_loss_jit": "an already-jitted loss (the module docstring)",
        "cross_entropy_loss_jit": "an already-jitted loss (the module docstring)",
        "focal_stream_loss_jit": "an already-jitted loss (the module docstring)",
        "chunked_stream_loss_jit": "an already-jitted loss (the module docstring)",
        "cb_stream_loss_sum_and_count": "a key of STATIC_ARGNAMES (jitted by name)",
        "focal_stream_loss_sum_and_count": "a key of STATIC_ARGNAMES (jitted by name)",
        "loss_sum_and_count": "a key of STATIC_ARGNAMES (jitted by name)",
        "metrics": "a key of STATIC_ARGNAMES (jitted by name)",
    },
    "streampro_jax.rewards": {
        "STATIC_ARGNAMES": "the static arguments of the rewards under jax.jit (the module "
                           "docstring)",
        "turn_f1_reward_jit": "the already-jitted Turn-F1 reward (the module docstring)",
    },
    "streampro_jax.data.pipeline": dict(
        {n: "a type that make_train_iterator returns, or a part of one"
         for n in ("Pipeline", "TrainIterator", "PipelineStats", "TrajectoryEncoder")},
        **{n: "builds a pipeline over one's own record source (docs/components.md)"
           for n in ("build_pipeline", "VideoFileSource", "TfdsSource", "synthetic_source")}),
    "streampro_jax.grpo": {
        n: "the GRPO math of docs/architecture.md#public-api, for one's own trainer"
        for n in ("grpo_loss", "grpo_loss_jit", "group_advantages_jit", "grpo_loss_and_aux",
                  "grpo_loss_sum_and_count", "per_token_grpo_loss", "aggregate_sum_and_count",
                  "kl_k1", "kl_k2", "kl_k3", "KL_ESTIMATORS", "AGGREGATIONS", "GRPO_PRESETS",
                  "STATIC_ARGNAMES", "logprob_agreement", "agreement_sums",
                  "agreement_from_sums")},
    "streampro_jax.sampling.decode": {
        n: _SAMPLING for n in ("Message", "top_p_filter")},
    "streampro_jax.sampling.formats": {
        n: _SAMPLING for n in ("TURN_SILENCE", "WAIT_INSTRUCTION", "WAIT_SYSTEM_PROMPT")},
    "streampro_jax.sampling.sampler": {
        n: _SAMPLING for n in ("FORCED_TOKEN", "PROMPT_TOKEN", "SAMPLED_TOKEN", "SamplerState",
                               "TurnOutput", "teacher_forced_logps")},
    "streampro_jax.train.sft": {
        n: _OWN_LOOP for n in ("make_sft_loss_fn", "make_sft_update", "sft_context")},
    "streampro_jax.train.grpo_step": {"build_grpo_update": _OWN_LOOP},
    "streampro_jax.train.step": {"accumulate_gradients": _OWN_LOOP},
    "streampro_jax.train.aot": {
        "Report": "the result type of compile_config (its fields are what launch/aot_compile.py "
                  "and users read)",
    },
    "streampro_jax.train.checkpoint": {
        "ProcessCountError": "the error a restore with another process count raises, which a "
                             "caller catches (docs/scale-out.md)",
        **{name: "orbax records a handler's class name in the checkpoint's metadata: renaming it "
                 "would break restoring existing checkpoints"
           for name in ("IteratorStateHandler", "IteratorStateSave", "IteratorStateRestore")}},
    "streampro_jax.train.config_check": {
        name: _CONFIG_NODE
        for name in ("SFTRun", "DataSection", "GRPOSection", "InitSection", "ModelSection",
                     "RolloutSection")},
}


def _files():
  """Repository-relative paths of the .py files of READERS."""
  return source_files.python_files(*READERS)


def _dotted(path: str) -> str:
  parts = os.path.splitext(path)[0].split(os.sep)
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _parse(path: str) -> ast.Module:
  with open(os.path.join(ROOT, path), encoding="utf-8") as f:
    return ast.parse(f.read(), filename=path)


_ALL_FILES = sorted(_files())
_MODULES = {_dotted(p) for p in _ALL_FILES}
_TREES = {p: _parse(p) for p in _ALL_FILES}


def _package_modules():
  """(dotted name, path) of every module of the package but the `__init__`s."""
  return [(_dotted(p), p) for p in _ALL_FILES
          if p.startswith(PACKAGE + os.sep) and not p.endswith("__init__.py")]


def _top_level_statements(body):
  """The statements of a module body, descending into top-level if / try blocks."""
  for node in body:
    yield node
    if isinstance(node, ast.If):
      yield from _top_level_statements(node.body + node.orelse)
    elif isinstance(node, ast.Try):
      yield from _top_level_statements(
          node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body])


def defined_names(tree: ast.Module) -> set[str]:
  """The names a module defines at top level (not the ones it imports)."""
  names = set()
  for node in _top_level_statements(tree.body):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
      names.add(node.name)
    elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
      for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
        names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
  names.discard("__all__")
  return names


def declared_all(tree: ast.Module) -> list[str] | None:
  """The module's `__all__` (a literal list / tuple of strings assigned at top level), or None."""
  found = None
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(
        isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
      if found is not None:
        raise AssertionError("__all__ is assigned twice")
      found = list(ast.literal_eval(node.value))
  return found


def _reexports() -> dict[tuple[str, str], tuple[str, str]]:
  """(package, name) -> (module, name) for each `from m import name` of a package __init__."""
  out = {}
  for path, tree in _TREES.items():
    if not path.endswith("__init__.py"):
      continue
    for node in tree.body:
      if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        for a in node.names:
          if f"{node.module}.{a.name}" not in _MODULES:
            out[(_dotted(path), a.asname or a.name)] = (node.module, a.name)
  return out


def _attribute_chain(node: ast.Attribute) -> list[str] | None:
  """`a.b.c` -> ['a', 'b', 'c']; None when the chain does not start at a plain name."""
  parts = []
  while isinstance(node, ast.Attribute):
    parts.append(node.attr)
    node = node.value
  if not isinstance(node, ast.Name):
    return None
  return [node.id] + parts[::-1]


def reads_of(path: str) -> set[tuple[str, str]]:
  """(module, name) pairs the file at `path` reads from modules of the package (the names a
  package re-exports resolved to their defining module)."""
  tree = _TREES[path]
  is_init = path.endswith("__init__.py")
  bound = {}   # a name in this file -> the dotted module it is bound to
  reads, imported = set(), {}
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      for a in node.names:
        if a.asname:
          bound[a.asname] = a.name
        else:
          bound[a.name.split(".")[0]] = a.name.split(".")[0]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        full = f"{node.module}.{a.name}"
        if full in _MODULES:
          bound[a.asname or a.name] = full
        else:
          imported[a.asname or a.name] = (node.module, a.name)
  loads = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
  for local, pair in imported.items():
    # A package __init__ that only re-exports a name does not read it.
    if not is_init or local in loads:
      reads.add(pair)
  for node in ast.walk(tree):
    if isinstance(node, ast.Attribute):
      chain = _attribute_chain(node)
      if not chain or chain[0] not in bound:
        continue
      module = bound[chain[0]]
      for attr in chain[1:]:
        if f"{module}.{attr}" in _MODULES:
          module = f"{module}.{attr}"
          continue
        reads.add((module, attr))
        break
  resolved = set(reads)
  for pair in reads:
    while pair in _REEXPORTS:
      pair = _REEXPORTS[pair]
      resolved.add(pair)
  return resolved


_REEXPORTS = _reexports()


def _readers() -> dict[tuple[str, str], set[str]]:
  """(module, name) -> the files (other than the module's own) that read it."""
  out = {}
  for path in _ALL_FILES:
    own = _dotted(path)
    for pair in reads_of(path):
      if pair[0] != own:
        out.setdefault(pair, set()).add(path)
  return out


_READERS = _readers()
_CHECKED = [(m, p) for m, p in _package_modules() if m not in _PENDING]


def test_pending_names_real_modules():
  assert _PENDING <= {m for m, _ in _package_modules()}, _PENDING - _MODULES


def test_allow_lists_name_public_names():
  """PROTOCOLS and USER_API name names in their module's `__all__`; a USER_API name is read by
  no file (one that is read needs no entry)."""
  stale = []
  paths = dict(_package_modules())
  for allowed, must_be_unread in ((PROTOCOLS, False), (USER_API, True)):
    for module, names in allowed.items():
      if module in _PENDING:
        continue
      for name in names:
        if name not in (declared_all(_TREES[paths[module]]) or []) or (
            must_be_unread and (module, name) in _READERS):
          stale.append(f"{module}.{name}")
  assert not stale, f"allow-list entries not in __all__, or read by a file: {stale}"


@pytest.mark.parametrize("module,path", _CHECKED, ids=[m for m, _ in _CHECKED])
def test_module_all(module, path):
  found = problems(module, _TREES[path])
  assert not found, f"{path}:\n  " + "\n  ".join(found)


def signature_types(tree: ast.Module, public: set[str]) -> dict[str, str]:
  """{name: the public function or method whose annotations name it}: every name (also inside
  a string annotation) in the argument and return annotations of the module's public functions
  and of the public methods of its public classes."""
  found: dict[str, str] = {}

  def note(fn: ast.FunctionDef, owner: str):
    args = fn.args.posonlyargs + fn.args.args + fn.args.kwonlyargs
    args += [a for a in (fn.args.vararg, fn.args.kwarg) if a is not None]
    for ann in [a.annotation for a in args if a.annotation] + [fn.returns] * bool(fn.returns):
      for node in ast.walk(ann):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
          try:
            inner = ast.walk(ast.parse(node.value, mode="eval"))
          except SyntaxError:
            continue
          names = [n.id for n in inner if isinstance(n, ast.Name)]
        else:
          names = [node.id] if isinstance(node, ast.Name) else []
        for name in names:
          found.setdefault(name, owner + fn.name)

  for stmt in _top_level_statements(tree.body):
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name in public:
      note(stmt, "")
    elif isinstance(stmt, ast.ClassDef) and stmt.name in public:
      for m in stmt.body:
        if isinstance(m, (ast.FunctionDef, ast.AsyncFunctionDef)) and not m.name.startswith("_"):
          note(m, stmt.name + ".")
  return found


def problems(module: str, tree: ast.Module) -> list[str]:
  """What breaks the rule in the module `module` whose AST is `tree` (empty: none).

  A class a public signature names (an argument or a result of a public function or method)
  is public: a caller holds its objects. Such a name counts as read; underscoring it is a
  breach (type aliases of other modules' types, `_Array = jax.Array`, may stay underscored)."""
  names = declared_all(tree)
  if names is None:
    return ["defines no __all__"]
  out = [f"{n}: twice in __all__" for n in sorted(set(names)) if names.count(n) > 1]
  defined = defined_names(tree)
  in_signatures = signature_types(tree, set(names))
  classes = {st.name for st in _top_level_statements(tree.body) if isinstance(st, ast.ClassDef)}
  for name in sorted(classes & set(in_signatures)):
    if name.startswith("_"):
      out.append(f"{name}: underscored, but {in_signatures[name]}'s signature names it "
                 "(make it public)")
  for name in sorted(defined - set(names)):
    if not name.startswith("_"):
      out.append(f"{name}: public but not in __all__ (add it, or underscore it)")
  for name in names:
    if name not in defined:
      out.append(f"{name}: in __all__ but not defined here")
    elif name.startswith("_"):
      out.append(f"{name}: underscored but in __all__")
    elif ((module, name) not in _READERS and name not in in_signatures
          and name not in {**PROTOCOLS.get(module, {}), **USER_API.get(module, {})}):
      out.append(f"{name}: no other file of {', '.join(READERS)} reads it "
                 f"(underscore it, or list it in USER_API with the reason)")
  return out


def test_each_kind_of_breach_is_found():
  """A module of the package whose __all__ misses a public name, names an import, names an
  unread definition, and leaves one out: each is reported; the same module done right is not."""
  bad = ast.parse("from os import path\n__all__ = ['path', 'unread', 'round_up']\n"
                  "def unread(): pass\ndef round_up(): pass\nHELPER = 1\n")
  found = problems("streampro_jax.models.common", bad)
  assert [f.split(":")[0] for f in found] == ["HELPER", "path", "unread"], found
  assert "not in __all__" in found[0] and "not defined here" in found[1] and "reads it" in found[2]
  good = ast.parse("__all__ = ['round_up']\ndef round_up(): pass\n_HELPER = 1\n")
  assert problems("streampro_jax.models.common", good) == []
  assert problems("streampro_jax.models.common", ast.parse("X = 1\n")) == ["defines no __all__"]
  hidden = ast.parse("__all__ = ['round_up']\nclass _Plan: pass\n"
                     "def round_up(p: '_Plan') -> int: pass\n")
  assert [f.split(":")[0] for f in problems("streampro_jax.models.common", hidden)] == ["_Plan"]
  shown = ast.parse("__all__ = ['Plan', 'round_up']\nclass Plan: pass\n"
                    "def round_up(p: int) -> list[Plan]: pass\n")
  assert problems("streampro_jax.models.common", shown) == []   # Plan: read by a signature


@pytest.mark.parametrize("source,reads", [
    ("from streampro_jax.models import kv_cache\nkv_cache.KVCache\n",
     {("streampro_jax.models.kv_cache", "KVCache")}),
    ("import streampro_jax.models.kv_cache as kc\nkc.init_cache()\n",
     {("streampro_jax.models.kv_cache", "init_cache")}),
    ("import streampro_jax\nstreampro_jax.models.common.round_up(3, 2)\n",
     {("streampro_jax.models.common", "round_up")}),
    ("from streampro_jax.spans import merge_spans\n", {("streampro_jax.spans", "merge_spans")}),
    ("from streampro_jax import models\nmodels.round_up(3, 2)\n",
     {("streampro_jax.models", "round_up"), ("streampro_jax.models.common", "round_up")}),
])
def test_the_walker_finds_each_kind_of_read(tmp_path, monkeypatch, source, reads):
  monkeypatch.setitem(_TREES, "m.py", ast.parse(source))
  assert reads_of("m.py") == reads
