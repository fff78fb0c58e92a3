#!/usr/bin/env bash
# Build the wheel, install it (not editable) into a scratch folder, and run `promptclip config -c coop` and a
# one-epoch tiny run from a folder outside the repository. Uses .venv's torch and other dependencies.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="$repo/.venv/bin/python"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"$python" -m pip wheel -q --no-deps --no-build-isolation -w "$work/dist" "$repo"
"$python" -m pip install -q --no-deps --target "$work/site" "$work"/dist/promptclip-*.whl
cd "$work"
export PYTHONPATH="$work/site"
"$python" -c "import promptclip, sys; assert promptclip.__file__.startswith('$work/site'), promptclip.__file__"
"$python" -m promptclip config -c coop | grep -q "name: coop"
"$python" -c "from promptclip.demo import write_digits; write_digits('digits')"
"$python" -m promptclip -q train -c coop data.root=digits model.name=tiny-vit model.pretrained=null data.shots=1 \
    train.epochs=1 output.root=runs output.cache_dir=cache
echo "smoke: 1 passed, 0 failed"
