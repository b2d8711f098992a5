"""`dersim.env` is the environment's public API: its names import from the package, lazily."""

from __future__ import annotations

import subprocess
import sys

from conftest import REPO


def test_the_env_package_exports_its_api_and_loads_jax_only_when_used() -> None:
    code = (
        "import sys, dersim.env as env\nassert 'jax' not in sys.modules, 'importing the constants "
        "loaded JAX'\nfrom dersim.env import DERGymEnv, EnvError, EnvSpec, load_tables, "
        "make_params, reset, step\nfrom dersim.errors import DersimError\nassert "
        "issubclass(EnvError, DersimError) and 'jax' in sys.modules\nassert set(env.__all__) >= "
        "{'EnvSpec', 'load_tables', 'make_params', 'reset', 'step', 'DERGymEnv'}\ntables = "
        "load_tables('cache/strategyqa', EnvSpec(split='train'))\nparams = "
        "make_params(tables)\nobs, state = reset(__import__('jax').random.PRNGKey(0), "
        "params)\nassert obs.shape == (params.obs_dim,)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
