"""Progress bars (chains_lite.core.progress): the environment switches them off whatever the
caller passes; without it, the caller's ``disable`` decides."""
import io

import pytest

from chains_lite.core.progress import ENV, progress_bar, progress_disabled


@pytest.fixture
def clean_env(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    return monkeypatch


@pytest.mark.parametrize("value", ["off", "OFF", "0", "false", "no"])
def test_the_variable_disables_a_bar_the_caller_enables(clean_env, value):
    clean_env.setenv(ENV, value)
    bar = progress_bar(range(3), disable=False)
    assert progress_disabled() and bar.disable
    assert list(bar) == [0, 1, 2]        # a disabled bar still iterates
    bar.close()


def test_tqdm_disable_is_honoured_over_an_explicit_argument(clean_env):
    clean_env.setenv("TQDM_DISABLE", "1")
    with progress_bar(total=5, disable=False) as bar:
        assert bar.disable


@pytest.mark.parametrize("value", [None, "on", "1", ""])
def test_without_the_variable_the_argument_decides(clean_env, value):
    if value is not None:
        clean_env.setenv(ENV, value)
    assert not progress_disabled()
    with progress_bar(range(2), disable=False, file=io.StringIO()) as on:
        assert not on.disable and list(on) == [0, 1]
    with progress_bar(range(2), disable=True) as off:
        assert off.disable
