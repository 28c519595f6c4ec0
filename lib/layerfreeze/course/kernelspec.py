"""The notebook kernel under the kit's thread policy.

``make setup`` registers the kernel with ``ipykernel install`` and then runs this module on the kernel spec it wrote,
so that the kernel starts through :func:`layerfreeze.base.runtime.launch_with_thread_policy`: the policy's
environment variables are set before the kernel imports torch (OpenMP reads ``OMP_WAIT_POLICY`` once, when it
starts), and a user's own ``OMP_NUM_THREADS`` / ``OMP_WAIT_POLICY`` still win. Fixed values in the spec's ``env``
would override the user's, which is why the spec runs a launcher instead.

    python -m layerfreeze.course.kernelspec .venv/share/jupyter/kernels/python3
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from ..base import runtime

LAUNCHER = "ipykernel_launcher"


def use_thread_policy(kernel_dir: str | Path) -> Path:
    """Rewrite ``kernel_dir/kernel.json`` so that ``python -m ipykernel_launcher ...`` becomes
    ``python .../runtime.py --launch ipykernel_launcher ...``; returns the file. Running it twice changes nothing.

    >>> import json, tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> argv = ["python", "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    >>> _ = (folder / "kernel.json").write_text(json.dumps({"argv": argv}))
    >>> json.loads(use_thread_policy(folder).read_text())["argv"][2:4] == ["--launch", "ipykernel_launcher"]
    True
    """
    path = Path(kernel_dir) / "kernel.json"
    if not path.is_file():
        raise FileNotFoundError(f"kernel_dir {str(kernel_dir)!r} has no kernel.json: pass the folder that "
                                "`python -m ipykernel install --sys-prefix --name python3` wrote, e.g. "
                                ".venv/share/jupyter/kernels/python3")
    spec = json.loads(path.read_text())
    argv = spec.get("argv", [])
    if "--launch" in argv:
        return path
    if [a for i, a in enumerate(argv[1:], 1) if argv[i - 1] == "-m"] != [LAUNCHER]:
        raise ValueError(f"kernel.json in {kernel_dir} does not start `-m {LAUNCHER}` (argv: {argv}); only "
                         "an ipykernel spec can run under the thread policy")
    at = argv.index("-m")
    spec["argv"] = argv[:at] + [str(Path(runtime.__file__).resolve()), "--launch"] + argv[at + 1:]
    path.write_text(json.dumps(spec, indent=1) + "\n")
    return path


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m layerfreeze.course.kernelspec KERNEL_DIR")
    print(f"kernel under the thread policy: {use_thread_policy(sys.argv[1])}")
