"""The model-backend registry: one module per backend, chosen by ``model.backend`` and nowhere else."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
from transformers import AutoModelForCausalLM

from medllm.config.checks import check_eval_config, check_train_config
from medllm.config.schema import backend_names, eval_backend
from medllm.errors import ConfigError
from medllm.generation.engines import peft_model_cfg
from medllm.models import backends
from medllm.models.backends import UnknownBackendError, get_backend
from tests.helpers.configs import CONF, ROOT, compose_train

HEAVY = ("torch", "transformers", "peft", "lightning", "unsloth", "bitsandbytes")
# Prints, as the process exits (sys.exit included), which of HEAVY were imported.
REPORT_HEAVY = f"""
import atexit, sys
atexit.register(lambda: print(sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r} and sys.modules[m])))
"""


def python(code: str) -> subprocess.CompletedProcess:
    """``code`` in a fresh Python with this checkout's medllm first on the path; its last line of output
    lists the heavy modules it imported."""
    return subprocess.run(
        [sys.executable, "-c", REPORT_HEAVY + textwrap.dedent(code)],
        cwd=ROOT,
        env={"PYTHONPATH": f"{ROOT / 'src'}:{ROOT}", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_each_backend_module_is_registered_under_its_own_name():
    assert set(backend_names()) >= {"tiny", "hf", "unsloth"}
    for name in backend_names():
        backend = get_backend(name)
        assert backend.name == name and isinstance(backend, backends.Backend)


def test_every_model_config_names_a_registered_backend_and_every_backend_has_one(tmp_path):
    named = {
        compose_train(f"model={path.stem}", f"paths.output_dir={tmp_path}").model.backend
        for path in (CONF / "model").glob("*.yaml")
    }
    assert named == set(backend_names())


def test_an_unknown_backend_is_one_line_listing_the_registered_ones(tmp_path):
    with pytest.raises(UnknownBackendError) as caught:
        get_backend("vllm")
    assert str(caught.value) == "model.backend=vllm is not a backend; the registered ones are hf | tiny | unsloth"
    for check, config_name in ((check_train_config, "train"), (check_eval_config, "eval")):
        cfg = compose_train("model.backend=vllm", f"paths.output_dir={tmp_path}", config_name=config_name)
        with pytest.raises(ConfigError, match=r"^model.backend=vllm must be one of hf \| tiny \| unsloth\.$"):
            check(cfg)


def test_picking_any_backend_imports_nothing_heavy():
    """train.py prepares the backend before transformers may be imported: the registry, every backend module
    and the config checks must not import torch, transformers or peft themselves."""
    out = python(
        """
        from medllm.models.backends import prepare_backend
        from medllm.config.checks import check_train_config
        from medllm.config.schema import backend_names
        from medllm.models.backends import get_backend

        for name in backend_names():
            get_backend(name)
        prepare_backend("tiny")
        prepare_backend("hf")
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("unsloth_module", "error"),
    [
        (None, "ModuleNotFoundError"),  # not installed
        ("raise NotImplementedError('Unsloth cannot find any torch accelerator')", "NotImplementedError"),  # no GPU
    ],
)
def test_unsloth_that_cannot_start_is_one_line_before_anything_heavy(tmp_path, unsloth_module, error):
    if unsloth_module is not None:
        (tmp_path / "unsloth.py").write_text(unsloth_module)
    out = python(
        f"""
        sys.path.insert(0, {str(tmp_path)!r})
        if {unsloth_module is None}:
            sys.modules["unsloth"] = None  # import unsloth raises ModuleNotFoundError
        from medllm.models.backends import prepare_backend
        prepare_backend("unsloth")
        """
    )
    assert out.stdout.strip() == "[]"
    assert out.returncode == 1
    assert out.stderr.startswith(f"error: model.backend=unsloth could not start ({error}: ")
    assert len(out.stderr.strip().splitlines()) == 1


def test_eval_loads_an_unsloth_model_through_hf_where_unsloth_was_not_imported_first(tmp_path, monkeypatch):
    model_cfg = compose_train("model=r1_distill_llama_8b", f"paths.output_dir={tmp_path}", config_name="eval").model
    monkeypatch.delitem(sys.modules, "unsloth", raising=False)
    assert peft_model_cfg(model_cfg).backend == "hf"
    assert model_cfg.backend == "unsloth"  # the caller's config is left as it was
    monkeypatch.setitem(sys.modules, "unsloth", type(sys)("unsloth"))
    assert peft_model_cfg(model_cfg).backend == "unsloth"


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["model.name_or_path=deepseek-ai/x"], "model.name_or_path=deepseek-ai/x is for model.backend=hf or unsloth"),
        (["model.tiny=null"], "model.backend=tiny needs model.tiny"),
        (["model=r1_distill_llama_8b_hf", "model.name_or_path=null"], "model.backend=hf needs model.name_or_path"),
        (["model=r1_distill_llama_8b", "model.name_or_path=null"], "model.backend=unsloth needs model.name_or_path"),
    ],
)
def test_a_model_config_its_backend_cannot_load_is_refused_before_loading(tmp_path, overrides, message):
    for config_name, check in (("train", check_train_config), ("eval", check_eval_config)):
        cfg = compose_train(*overrides, f"paths.output_dir={tmp_path}", config_name=config_name)
        with pytest.raises(ConfigError, match=message):
            check(cfg)


def test_the_tiny_base_config_describes_the_model_it_builds(tmp_path):
    """eval.py sizes its engine from base_config without loading weights: it must be the built model's."""
    model_cfg = compose_train("model.tiny.hidden_size=96", f"paths.output_dir={tmp_path}").model
    backend = get_backend("tiny")
    built = backend.load_base(model_cfg, backend.load_tokenizer(model_cfg))
    with torch.device("meta"):
        from_config = AutoModelForCausalLM.from_config(backend.base_config(model_cfg))
    assert built.config.hidden_size == 96
    shapes = {name: p.shape for name, p in built.named_parameters()}
    assert {name: p.shape for name, p in from_config.named_parameters()} == shapes


def test_a_new_backend_is_a_module_and_nothing_else(tmp_path):
    """A module dropped into the package is a backend: the schema accepts its name, the registry loads it."""
    (tmp_path / "echo.py").write_text(
        textwrap.dedent(
            """
            from medllm.models.backends.hf import HFBackend

            class EchoBackend(HFBackend):
                name = "echo"

            BACKEND = EchoBackend()
            """
        )
    )
    out = python(
        f"""
        import medllm.models.backends as backends
        backends.__path__.append({str(tmp_path)!r})
        from omegaconf import OmegaConf
        from medllm.config.schema import Model
        from medllm.config.schema_check import validate
        validate(OmegaConf.create({{"backend": "echo", "name_or_path": "x"}}), Model)
        from medllm.config.schema import backend_names
        print(backend_names(), backends.get_backend("echo").name)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "('echo', 'hf', 'tiny', 'unsloth') echo"


@pytest.mark.parametrize(
    ("overrides", "prepared"),
    [
        ([], None),  # the merged engine needs transformers only: Unsloth is not imported
        (["engine=peft"], "unsloth"),
        (["mode=generate", "question=Why?"], "unsloth"),
        (["benchmark=medical_o1_val"], "unsloth"),
    ],
)
def test_eval_prepares_the_backend_only_where_the_model_runs_as_trained(tmp_path, overrides, prepared):
    cfg = compose_train("model=r1_distill_llama_8b", *overrides, f"paths.output_dir={tmp_path}", config_name="eval")
    assert eval_backend(cfg) == prepared
