"""Library messages name parameters; the CLI shows the flags."""

from __future__ import annotations

import pytest

from ben_cli.cli.app import main
from ben_cli.errors import BenWarning, EngineError, OptionError, render_options


def test_placeholders_render_as_parameter_names_or_flags() -> None:
    assert render_options("use {opt:precision} fp32 or {opt:max_refine_side}", flags=False) == \
        "use precision fp32 or max_refine_side"
    assert render_options("use {opt:precision} fp32 or {opt:max_refine_side}", flags=True) == \
        "use --precision fp32 or --max-refine-side"
    error = EngineError("{opt:engine} ray needs Ray Data")
    assert str(error) == "engine ray needs Ray Data" and error.flag_message() == "--engine ray needs Ray Data"
    option = OptionError("autocast", "use it with {opt:precision} fp16")
    assert str(option) == "autocast: use it with precision fp16"
    assert option.flag_message() == "--autocast: use it with --precision fp16"
    warning = BenWarning("use {opt:precision} bf16")
    assert str(warning) == "use precision bf16" and warning.flag_message() == "use --precision bf16"


def test_the_cli_prints_flags_for_a_library_option_error(tmp_path, capsys) -> None:
    image = tmp_path / "a.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(image)
    assert main(["erase", str(image), str(tmp_path / "out"), "--precision", "fp32", "--autocast",
                 "--model", "tiny", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--autocast" in err and "--precision fp16" in err and "{opt:" not in err


@pytest.mark.parametrize("flags", [False, True])
def test_text_without_placeholders_is_unchanged(flags: bool) -> None:
    assert render_options("a --literal {flag} text", flags=flags) == "a --literal {flag} text"
