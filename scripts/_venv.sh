# Shared by scripts/test and scripts/demo: make .venv and install the project into it.
# Re-installs only when pyproject.toml or the compiled sender's C sources changed since the last
# install (an editable install builds the extension once, in place).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
py=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$py" -m venv .venv || {
        echo "scripts: could not create .venv; on Debian run: apt-get install python3-venv" >&2
        exit 2
    }
fi
stamp=.venv/.loadtape-installed
want="$(cat pyproject.toml replay/send/wire_c/* | sha256sum | cut -d' ' -f1) ${LOADTAPE_EXTRAS:-}"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "scripts: installing loadtape and its dependencies into .venv (log: .venv/install.log)" >&2
    if ! { .venv/bin/python -m pip install --upgrade pip &&
        .venv/bin/python -m pip install -e ".[dev${LOADTAPE_EXTRAS:+,$LOADTAPE_EXTRAS}]"; } \
        >.venv/install.log 2>&1; then
        tail -n 30 .venv/install.log >&2
        echo "scripts: pip install failed (full log: .venv/install.log)" >&2
        exit 2
    fi
    echo "$want" > "$stamp"
fi
export PATH="$root/.venv/bin:$PATH"
