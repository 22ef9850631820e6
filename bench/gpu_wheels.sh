#!/usr/bin/env bash
# Wheels for bench/bench_gpu.py on a GPU host that has Python and a preinstalled torch but no package index.
#
#   bash bench/gpu_wheels.sh download [DIR]          # here (with PyPI): the wheels of bench/gpu-wheels.txt -> DIR
#   bash bench/gpu_wheels.sh install DIR SITE [PY]   # there: pip install --no-index --no-deps --target SITE, import check
#   PYTHONPATH=SITE:. python3 bench/bench_gpu.py
#
# GPU_PYTHON (default 3.12, the GPU image's python3) picks the CPython of the binary wheels; PIP (default
# `python3 -m pip`) the pip that downloads. DIR must stay well under 64 MiB (it travels with the tree).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
list="$here/gpu-wheels.txt"
limit_mib=48

cmd="${1:-}"
case "$cmd" in
download)
    dir="${2:-gpu-wheels}"
    py="${GPU_PYTHON:-3.12}"
    pip_cmd=${PIP:-python3 -m pip}
    mkdir -p "$dir"
    rm -f "$dir"/*.whl  # one version of each: two of a name stop pip install
    # shellcheck disable=SC2086
    $pip_cmd download --quiet --no-deps --only-binary=:all: --python-version "$py" --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform any -d "$dir" -r "$list"
    wanted=$(grep -cvE '^\s*(#|$)' "$list")
    got=$(ls "$dir"/*.whl | wc -l)
    if [ "$got" -ne "$wanted" ]; then
        echo "gpu-wheels: $got wheels in $dir, $list names $wanted" >&2
        exit 1
    fi
    bytes=$(cat "$dir"/*.whl | wc -c)
    mib=$(( (bytes + 1048575) / 1048576 ))
    ls -l "$dir"/*.whl | awk '{printf "  %9d  %s\n", $5, $NF}'
    echo "gpu-wheels: $got wheels, $mib MiB in $dir (CPython $py binaries; limit $limit_mib MiB)"
    if [ "$mib" -gt "$limit_mib" ]; then
        echo "gpu-wheels: $dir is over $limit_mib MiB: it must travel with the working tree (64 MiB in all)" >&2
        exit 1
    fi
    ;;
install)
    dir="${2:?usage: gpu_wheels.sh install DIR SITE [PY]}"
    site="${3:?usage: gpu_wheels.sh install DIR SITE [PY]}"
    py="${4:-python3}"
    if ! ls "$dir"/*.whl >/dev/null 2>&1; then
        echo "gpu-wheels: no wheels in $dir: run \`make gpu-wheels\` where PyPI is reachable and copy $dir along" >&2
        exit 1
    fi
    "$py" -c 'import torch' || { echo "gpu-wheels: $py has no torch: the GPU bench needs a preinstalled torch" >&2; exit 1; }
    "$py" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" "$dir"/*.whl
    PYTHONPATH="$site" "$py" -c 'import diffusers, transformers, open_clip, accelerate, webdataset, simplejpeg, cv2, pyarrow, yaml; print("gpu-wheels: imports ok (diffusers", diffusers.__version__, "transformers", transformers.__version__, ")")'
    ;;
*)
    echo "usage: gpu_wheels.sh download [DIR] | install DIR SITE [PY]" >&2
    exit 2
    ;;
esac
