# Sourced at the start of a device command (after .carry/ was carried):  source .carry/gpu-env.sh
# (.ci/gpu/pack.sh copies this file there; refreshed from ../shared/device/gpu-env.sh)
# Installs the carried wheels into /tmp/site, puts them and lib/ on PYTHONPATH, points the offline model at the fp16 copy,
# and registers a Jupyter kernel named python3 for papermill.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/wheels/*.whl || return 1
export PYTHONPATH=/tmp/site:$PWD/lib${PYTHONPATH:+:$PYTHONPATH}
export PATH=/tmp/site/bin:$PATH
export JUPYTER_PATH=/tmp/site/share/jupyter
export LAYERFREEZE_MINILM_DIR=$PWD/.carry/minilm-fp16
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python3 -m ipykernel install --prefix /tmp/site --name python3 >/dev/null 2>&1 || return 1
