"""`slm completion SHELL`: a completion script with every verb and flag, from the parser itself."""

from __future__ import annotations

import io
import shutil
import subprocess

import pytest

from slm_operator.cli.__main__ import COMPLETION_SHELLS, main


@pytest.mark.parametrize("shell", COMPLETION_SHELLS)
def test_the_script_knows_every_verb(shell: str) -> None:
    out = io.StringIO()
    assert main(["completion", shell], out=out) == 0
    script = out.getvalue()
    for verb in ("create", "deploy", "list", "ps", "run", "bench", "pull", "show", "why", "rm", "models"):
        assert verb in script, verb
    assert "--sort-by" in script and "--keep-cache" in script


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_bash_loads_the_script_and_completes_a_verb() -> None:
    out = io.StringIO()
    main(["completion", "bash"], out=out)
    # What bash's programmable completion does for `slm be<TAB>`.
    probe = (
        out.getvalue()
        + '\nCOMP_WORDS=(slm be); COMP_CWORD=1; COMP_LINE="slm be"; COMP_POINT=${#COMP_LINE}\n'
        + '_shtab_slm; printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["bench"]


def test_an_unknown_shell_is_refused() -> None:
    err = io.StringIO()
    assert main(["completion", "fish"], err=err) == 1
    assert err.getvalue() == (
        "error: slm completion: argument shell: invalid choice: 'fish' (choose from 'bash', 'zsh'); "
        "see `slm completion --help`\n"
    )
