"""`dersim.env` is the environment's public API: its names import from the package, lazily."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_the_env_package_exports_its_api_and_loads_jax_only_when_used() -> None:
    code = (
        "import sys, dersim.env as env\n"
        "assert 'jax' not in sys.modules, 'importing the constants loaded JAX'\n"
        "from dersim.env import DERGymEnv, EnvError, EnvSpec, load_tables, make_params, reset, step\n"
        "from dersim.errors import DersimError\n"
        "assert issubclass(EnvError, DersimError) and 'jax' in sys.modules\n"
        "assert set(env.__all__) >= {'EnvSpec', 'load_tables', 'make_params', 'reset', 'step', 'DERGymEnv'}\n"
        "tables = load_tables('cache/strategyqa', EnvSpec(split='train'))\n"
        "params = make_params(tables)\n"
        "obs, state = reset(__import__('jax').random.PRNGKey(0), params)\n"
        "assert obs.shape == (params.obs_dim,)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
