"""Every command's --help teaches with examples; the CLI imports nothing heavy to show them."""

import subprocess
import sys

import pytest

from localpeer.cli import main

COMMANDS = ["pull", "data", "train", "export", "chat", "generate", "judge", "probe", "report",
            "score"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_has_examples(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "example" in out and f"localpeer {command}" in out


def test_top_level_help_lists_every_command_without_importing_torch():
    code = ("import sys; from localpeer.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules, 'llama_cpp' in sys.modules, file=sys.stderr)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stderr.strip().endswith("False False")
    for command in COMMANDS:
        assert f"\n    {command} " in out.stdout
