# Sourced by tests/run, tests/demo and .ci/run: make (or refresh) the project's
# virtualenv and put it first on PATH. Works as root and as an ordinary user;
# the venv lives in $SCAS_VENV (default: .venv in the checkout).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${SCAS_VENV:-$REPO/.venv}
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: need Python >= 3.11 as '$PYTHON' (set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi
stamp="$VENV/.scas-installed-$(cksum < "$REPO/pyproject.toml" | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
    echo "bootstrap: installing the project and its test tools into $VENV" >&2
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    log="$VENV/bootstrap.log"
    if ! { "$VENV/bin/python" -m pip install --disable-pip-version-check --upgrade pip &&
           "$VENV/bin/python" -m pip install --disable-pip-version-check -e "$REPO[dev]"; } \
           > "$log" 2>&1; then
        tail -n 30 "$log" >&2
        echo "bootstrap: pip install failed (full log: $log)" >&2
        exit 2
    fi
    rm -f "$VENV"/.scas-installed-*
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
