#!/usr/bin/env bash
# GPU bundle (issue 26): a pruned site folder of what the lent GPU machine lacks, built here.
#
# The lent machine (/work/.library/device/KINDS.md) has CPython 3.12, torch 2.11 (cu130),
# transformers 5.17, accelerate, peft, tensorboard, pandas, pyarrow, typer, rich, pyyaml, ... but
# no trl, datasets, pydantic, bitsandbytes, unsloth, unsloth_zoo, gguf or vllm, and no registry.
# At most 64 MiB travel with one call (the whole working tree). This script downloads the missing
# wheels (pinned to pyproject.toml's lattice, manylinux x86-64, cp312), unpacks them into one
# site folder and prunes what the check never imports:
#   - bitsandbytes: every native library but CUDA 13.0's (torch there is cu130) and the CPU one
#   - unsloth: its `studio` web app (82 MB unpacked) and `unsloth_cli` (the `unsloth` command)
#   - every package: __pycache__, tests, and the wheels' RECORD files stay as pip wrote them
# then prints the size and the contents. Nothing here is committed (.gitignore: /.gpu-bundle/).
#
# Usage, from anywhere (writes into the repository root):
#     bash bench/gpu_bundle.sh            # -> .gpu-bundle/site (wheels cached in .gpu-bundle/wheels)
#     PIP="python3 -m pip" bash bench/gpu_bundle.sh
# Then one device call runs the check with it (docs/recipes.md, "GPU check"):
#     carry: [".gpu-bundle/site"]   command: bash bench/gpu_check.sh
# (gpu_check.sh puts .gpu-bundle/site on PYTHONPATH when it exists.)
#
# Exit 1 when a download fails or the folder is over BUNDLE_MAX_MIB (default 60).
set -euo pipefail
cd "$(dirname "$0")/.."

PIP=${PIP:-python3 -m pip}
DEST=${BUNDLE_DIR:-.gpu-bundle}
MAX_MIB=${BUNDLE_MAX_MIB:-60}
CUDA_LIB=${BUNDLE_CUDA:-cuda130}   # bitsandbytes' library for the machine's torch (cu130)

# What the lent machine lacks, pinned. The first block is recone-lite's own needs (pyproject.toml),
# the second what they need in turn and the machine lacks (each wheel's Requires-Dist, checked
# against KINDS.md's package list), the third Unsloth's. Versions are the ones the CPU lattice
# runs (FACTS.md) or, for packages that lattice does not hold, the newest at the time of writing.
PACKAGES=(
    trl==1.14.2 datasets==4.8.5 pydantic==2.14.4 bitsandbytes==0.50.2 gguf==0.19.0
    pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    dill==0.4.1 multiprocess==0.70.19
    unsloth==2026.10.9 unsloth_zoo==2026.10.9 cut_cross_entropy==25.1.1 msgspec==0.23.0
)
# Not carried, on purpose:
#   vllm (hundreds of MB; `predict vllm` and `grpo.use_vllm` rows fail as "vllm not installed"),
#   xformers (large; Unsloth falls back to torch SDPA), torchao (Unsloth imports it guarded, for
#   fp8 / QAT only), diffusers, hf_transfer, tyro, json5, structlog, nest-asyncio (Unsloth's
#   Requires-Dist for its studio and CLI, which are pruned; none is imported by `import unsloth`,
#   checked by grep over the unpacked sources), scikit-surprise (the MF baseline, not on the GPU
#   path), openai (the openai backend only).
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64
           manylinux2014_x86_64 manylinux1_x86_64)
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done

mkdir -p "$DEST/wheels"
echo "gpu_bundle: downloading ${#PACKAGES[@]} wheels (cp312, manylinux x86-64) into $DEST/wheels"
# --no-deps: the dependency closure is the list above (the machine has the rest); pip would
# otherwise pull torch, transformers, ... again.
$PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --abi cp312 --abi abi3 --abi none "${platform_args[@]}" --platform any \
    -d "$DEST/wheels" "${PACKAGES[@]}"

# One version of each: a stale wheel of another version in the cache would unpack over the
# pinned one.
wheels=()
for spec in "${PACKAGES[@]}"; do
    name=${spec%%==*}; version=${spec#*==}
    norm=$(echo "$name" | tr '-' '_' | tr '[:upper:]' '[:lower:]')
    found=$(ls "$DEST/wheels" | awk -v n="$norm" -v v="$version" '
        { split($0, a, "-"); w = tolower(a[1]); gsub("-", "_", w) }
        w == n && a[2] == v { print; exit }')
    if [ -z "$found" ]; then
        echo "gpu_bundle: no wheel of $spec in $DEST/wheels" >&2
        exit 1
    fi
    wheels+=("$DEST/wheels/$found")
done

site="$DEST/site"
rm -rf "$site" "$site.tmp"
mkdir -p "$site.tmp"
# A wheel is a zip laid out as a site folder: unzip is all `pip install --target` would do for
# these (no scripts or data files are needed; the console scripts are not used).
for w in "${wheels[@]}"; do
    python3 - "$w" "$site.tmp" <<'EOF'
import sys, zipfile
zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])
EOF
done

mib() { du -sb "$1" | awk '{ printf "%.1f", $1 / 1048576 }'; }
before=$(mib "$site.tmp")
# --- prune -----------------------------------------------------------------------------------
(
    cd "$site.tmp"
    # bitsandbytes picks libbitsandbytes_cuda<torch.version.cuda>.so (cextension.py); keep that
    # one and the CPU fallback it loads when no GPU is visible.
    find bitsandbytes -maxdepth 1 -name 'libbitsandbytes_*.so' \
        ! -name "libbitsandbytes_${CUDA_LIB}.so" ! -name 'libbitsandbytes_cpu.so' -delete
    # Unsloth's web studio and the `unsloth` CLI: not imported by `import unsloth`.
    rm -rf studio unsloth_cli
    # Caches, tests and type stubs nobody imports at run time.
    find . -name __pycache__ -type d -prune -exec rm -rf {} +
    find . -path '*/tests' -type d -prune -exec rm -rf {} +
    find . -name '*.pyi' -delete
    # A wheel's .data folder holds console scripts and headers (dill's), never imported.
    find . -maxdepth 1 -name '*.data' -type d -exec rm -rf {} +
    # The dist-info folders stay: recone_lite.versions and Unsloth read versions from them.
    # Their RECORD lists pruned files; nothing verifies it at import.
)
mv "$site.tmp" "$site"

{
    echo "# recone-lite GPU bundle, built $(date -u +%Y-%m-%dT%H:%MZ) by bench/gpu_bundle.sh"
    echo "# for CPython 3.12, manylinux x86-64, bitsandbytes library ${CUDA_LIB}"
    for w in "${wheels[@]}"; do basename "$w"; done
} >"$site/BUNDLE.txt"

after=$(mib "$site")
echo "gpu_bundle: $site: ${after} MiB in $(find "$site" -type f | wc -l) files (${before} MiB before pruning), budget ${MAX_MIB} MiB"
echo "gpu_bundle: contents (MiB per package, dist-info folders left out of the list):"
du -sb "$site"/* | grep -v '\.dist-info$' | sort -rn |
    awk '{ n = $2; sub(".*/", "", n); printf "  %6.2f  %s\n", $1 / 1048576, n }'
echo "gpu_bundle: wheels:"
sed -n '3,$p' "$site/BUNDLE.txt" | sed 's/^/  /'
tree=$(git ls-files -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "gpu_bundle: with the tracked tree ($(awk -v b="$tree" 'BEGIN { printf "%.1f", b / 1048576 }') MiB) a device call carries $(du -sb "$site" | awk -v b="$tree" '{ printf "%.1f", ($1 + b) / 1048576 }') MiB of its 64"
if awk -v a="$after" -v m="$MAX_MIB" 'BEGIN { exit !(a > m) }'; then
    echo "gpu_bundle: $site is ${after} MiB, over BUNDLE_MAX_MIB=${MAX_MIB}" >&2
    exit 1
fi
