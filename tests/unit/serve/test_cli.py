"""`honed serve` flags become settings; bad flags and missing models are clear errors, not tracebacks."""

from __future__ import annotations

import pytest

from honed.cli import build_parser, main
from honed.commands.serve import settings_from_args
from honed.errors import ConfigError
from honed.serve.backends import model_scope_prompt
from honed.serve.server import exposure_warning


def parse(*argv):
    return build_parser().parse_args(["serve", *argv])


def test_flags_become_settings(monkeypatch):
    monkeypatch.delenv("HONED_API_KEY", raising=False)
    settings, defaults = settings_from_args(parse("--adapter", "runs/lab-lora/", "--max-batch", "4", "--max-new-tokens", "2000",
                                                  "--max-tokens-limit", "512", "--temperature", "0.3", "--no-thinking"))
    assert (settings.host, settings.port, settings.api_key, settings.model_name) == ("127.0.0.1", 8000, None, "lab-lora")
    assert (settings.max_batch, settings.default_max_tokens, settings.max_tokens_limit) == (4, 512, 512)
    assert (defaults.max_new_tokens, defaults.temperature, defaults.enable_thinking) == (512, 0.3, False)
    gguf, _ = settings_from_args(parse("--gguf", "exports/lab-Q4_K_M.gguf", "--served-model-name", "lab"))
    assert gguf.model_name == "lab"


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("HONED_API_KEY", "from-env")
    settings, _ = settings_from_args(parse("--model", "m"))
    assert settings.api_key == "from-env"


def test_bad_flags_are_config_errors():
    with pytest.raises(ConfigError, match="--max-concurrency must be at least 1"):
        settings_from_args(parse("--model", "m", "--max-concurrency", "0"))
    assert main(["serve"]) == 2  # no model: an error message, exit 2


def test_scope_prompt_from_the_adapter_first(tmp_path):
    from honed.model.scope import save_scope_prompt

    adapter, model = tmp_path / "adapter", tmp_path / "model"
    adapter.mkdir(), model.mkdir()
    save_scope_prompt(model, "model scope")
    assert model_scope_prompt(str(adapter), str(model)) == "model scope"
    save_scope_prompt(adapter, "adapter scope")
    assert model_scope_prompt(str(adapter), str(model)) == "adapter scope"
    assert model_scope_prompt(None, str(tmp_path / "missing")) is None


def test_exposed_without_key_warns_loudly():
    from honed.serve.settings import ServeSettings

    assert "WITHOUT an API key" in exposure_warning(ServeSettings(host="0.0.0.0"))
    assert "API key required" in exposure_warning(ServeSettings(host="0.0.0.0", api_key="k"))
