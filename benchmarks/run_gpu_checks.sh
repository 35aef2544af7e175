#!/usr/bin/env bash
# The project's GPU checks, stage by stage, on a CUDA machine that has torch, triton and transformers.
# Results go to benchmarks/results/ (and to $OUT when it is set, where a lent machine's files come back).
#
#   ../shared/device/fetch-wheels.sh               # first, where a package index is reachable
#   bash benchmarks/run_gpu_checks.sh [STAGE ...]  # stages: tests equivalence logprob throughput
#                                                  #   throughput-example-chunks fit fit-8bit fit-pure-bf16
#
# Default: tests, equivalence and logprob (a few minutes on an H100); throughput and the fit stages each
# take longer and are best run alone.
set -uo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        .whl/*.whl || exit
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation -e . || exit
export PYTHONUNBUFFERED=1
slug=$(python3 -c 'import sys, torch; sys.path.insert(0, "benchmarks"); from _results import device_slug
print(device_slug(torch.cuda.get_device_name()))') || exit
mkdir -p benchmarks/results
status=0
for stage in "${@:-tests equivalence logprob}"; do
    for name in $stage; do
        echo "== $name"
        case $name in
            tests) python3 -m pytest -q -rs -p no:cacheprovider tests/kernels/test_kernels.py \
                       tests/kernels/test_kernels_static.py tests/model/test_attention.py \
                       tests/model/test_preference_model.py 2>&1 | tee "benchmarks/results/gpu-tests-$slug.txt" ;;
            equivalence) python3 benchmarks/check_packed_equivalence.py ;;
            # Example chunks of 2^26, 2^28 (the default) and 2^30 logits.
            logprob) python3 benchmarks/bench_logprob.py --chunk-logits 67108864 268435456 1073741824 ;;
            throughput) python3 benchmarks/bench_throughput.py ;;
            throughput-example-chunks) python3 benchmarks/bench_throughput.py --systems 4 5 --no-sweep \
                       --logprob-algorithm example_chunks ;;
            fit) python3 benchmarks/fit_8b.py ;;
            # One GPU without offload: 8-bit states stepped inside the backward, with and without fp32 masters.
            fit-8bit) python3 benchmarks/fit_8b.py --optimizer 8bit-in-backward ;;
            fit-pure-bf16) python3 benchmarks/fit_8b.py --optimizer pure-bf16 ;;
            *) echo "unknown stage: $name"; false ;;
        esac || status=1
    done
done
if [ -n "${OUT:-}" ]; then
    cp benchmarks/results/*"$slug"* "$OUT"/ 2>/dev/null
fi
exit $status
