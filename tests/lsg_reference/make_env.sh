#!/usr/bin/env bash
# Creates the test-only virtualenv that runs the original PyTorch LSG-BART (lsg-converter 0.1.9), which
# imports only with transformers 4.44.2. The LSG parity tests (tests/test_lsg_*.py, tests/test_family_contract.py)
# run the reference in a subprocess under it, and skip when it is missing (fail when CI is set).
#
#   bash tests/lsg_reference/make_env.sh [VENV_DIR]     # default: .venv-lsg at the repository root
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
venv="${1:-$root/.venv-lsg}"
python="${PYTHON:-python3}"
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import lsg_converter, transformers, torch; \
assert transformers.__version__ == '4.44.2'" 2>/dev/null; then
    echo "$venv is ready"
    exit 0
fi
"$python" -m venv "$venv"
# Keep git from listing the environment (python >= 3.13 writes this file itself).
echo '*' > "$venv/.gitignore"
"$venv/bin/pip" install -q --upgrade pip
"$venv/bin/pip" install -q "torch==2.13.0" "transformers==4.44.2" "lsg-converter==0.1.9" numpy safetensors
"$venv/bin/python" -c "import lsg_converter, transformers, torch; print('reference env:', transformers.__version__, torch.__version__)"
